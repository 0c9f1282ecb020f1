// A local stand-in for Stripe's Billing Meters API, strict about the wire format: POST
// /v1/billing/meter_events, form-encoded, Bearer secret, and exactly the five fields. Like Stripe,
// it answers a reused identifier with a 400. `mode` steers it:
//   "ok"    record and answer 200
//   "lose"  record, but answer 500 (the response was lost: the event did reach Stripe)
//   "fail"  record nothing, answer 500
import http from "node:http";

export function createStripe(secret) {
  const stripe = {
    mode: "ok",
    requests: [], // every request, valid or not
    events: new Map(), // identifier → {event_name, customer, value, timestamp}: what was billed
    errors: [],
  };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const form = Object.fromEntries(new URLSearchParams(body));
      stripe.requests.push({ url: req.url, headers: req.headers, form });
      const reply = (status, json) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(json));
      };
      const problems = [];
      if (req.method !== "POST" || req.url !== "/v1/billing/meter_events") problems.push(`unexpected ${req.method} ${req.url}`);
      if (req.headers["content-type"] !== "application/x-www-form-urlencoded") problems.push(`content-type ${req.headers["content-type"]}`);
      if (req.headers.authorization !== `Bearer ${secret}`) problems.push("bad authorization");
      const keys = Object.keys(form).sort().join(",");
      if (keys !== "event_name,identifier,payload[stripe_customer_id],payload[value],timestamp") problems.push(`fields ${keys}`);
      if (!/^\d+$/.test(form["payload[value]"] ?? "") || !/^\d+$/.test(form.timestamp ?? "")) problems.push("non-integer value or timestamp");
      if (problems.length) {
        stripe.errors.push(problems);
        return reply(400, { error: { type: "invalid_request_error", message: problems.join("; ") } });
      }
      if (stripe.mode === "fail") return reply(500, { error: { type: "api_error", message: "Stripe is having a bad day" } });
      if (stripe.events.has(form.identifier)) {
        return reply(400, { error: { type: "invalid_request_error", message: `An event already exists with identifier ${form.identifier}.` } });
      }
      stripe.events.set(form.identifier, {
        event_name: form.event_name, customer: form["payload[stripe_customer_id]"], value: Number(form["payload[value]"]), timestamp: Number(form.timestamp),
      });
      if (stripe.mode === "lose") return reply(500, { error: { type: "api_error", message: "connection reset" } });
      reply(200, { object: "billing.meter_event", identifier: form.identifier, event_name: form.event_name });
    });
  });
  stripe.listen = () => new Promise((r) => server.listen(0, "127.0.0.1", () => r(server.address().port)));
  stripe.close = () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); });
  /** What Stripe billed per customer and event name. */
  stripe.billed = () => {
    const out = {};
    for (const e of stripe.events.values()) out[`${e.customer}/${e.event_name}`] = (out[`${e.customer}/${e.event_name}`] ?? 0) + e.value;
    return out;
  };
  return stripe;
}
