/**
 * Routes by the History API: the fragment is reserved for the dev sign-in (`#token=`).
 */

import { useSyncExternalStore } from "react";

const NAVIGATE_EVENT = "billing:navigate";

function subscribe(onChange: () => void): () => void {
  window.addEventListener("popstate", onChange);
  window.addEventListener(NAVIGATE_EVENT, onChange);
  return () => {
    window.removeEventListener("popstate", onChange);
    window.removeEventListener(NAVIGATE_EVENT, onChange);
  };
}

function currentLocation(): string {
  return `${window.location.pathname}${window.location.search}`;
}

/** The path and query shown, re-rendering on navigation. */
export function useLocation(): { pathname: string; search: string } {
  const href = useSyncExternalStore(subscribe, currentLocation);
  const queryAt = href.indexOf("?");
  return queryAt < 0
    ? { pathname: href, search: "" }
    : { pathname: href.slice(0, queryAt), search: href.slice(queryAt) };
}

export function navigate(url: string, options: { replace?: boolean } = {}): void {
  if (options.replace) {
    window.history.replaceState(window.history.state, "", url);
  } else {
    window.history.pushState(null, "", url);
  }
  window.dispatchEvent(new Event(NAVIGATE_EVENT));
}

/** Route matching ignores one trailing slash: "/credits/" is "/credits". */
export function normalisePath(pathname: string): string {
  return pathname.length > 1 ? pathname.replace(/\/+$/, "") || "/" : pathname;
}
