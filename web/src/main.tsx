import { StrictMode } from "react";
import { createRoot } from "react-dom/client";

import {
  TokenStore,
  consumeFragmentToken,
  embedderOrigin,
  listenForHostToken,
  sessionTokenStorage,
} from "./auth";
import { App } from "./components/App";
import { loadConfig } from "./config";
import "./styles.css";

/** Stripe Checkout refuses to be framed: a framed page sends the whole window there. */
function leaveTo(url: string): void {
  if (window.top && window.top !== window.self) {
    try {
      window.top.location.href = url;
      return;
    } catch {
      // A sandbox without allow-top-navigation: leave the frame itself instead.
    }
  }
  window.location.assign(url);
}

async function start(root: HTMLElement): Promise<void> {
  const tokens = new TokenStore(sessionTokenStorage());
  let config;
  try {
    config = await loadConfig();
  } catch (error) {
    // The fragment may hold a token: it must not stay in the address bar even now.
    consumeFragmentToken(window.location, window.history, tokens, false);
    root.textContent = "The Credits page is not configured correctly. Please try again later.";
    console.error(error);
    return;
  }
  consumeFragmentToken(window.location, window.history, tokens, config.dev);
  const origin = embedderOrigin(window, window.self, document.referrer);
  const host = origin ? listenForHostToken(window, origin, tokens) : null;
  createRoot(root).render(
    <StrictMode>
      <App config={config} tokens={tokens} requestToken={host?.request} leaveTo={leaveTo} />
    </StrictMode>,
  );
}

const root = document.getElementById("root");
if (root) {
  void start(root);
}
