// The pages' tests' browser: Debian's headless Chromium (`make setup` installs it), driven by
// playwright-core, with what would reach the network or slow a test turned off.
import { chromium } from "playwright-core";

/** A fresh headless Chromium; `CHROMIUM_PATH` overrides where it is. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
}
