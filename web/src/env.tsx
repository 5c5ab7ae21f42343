import { createContext, useContext } from "react";

import type { ApiClient } from "./api";
import type { Claims } from "./auth";
import type { Config } from "./config";

/** What the pages need from outside React: injected, so tests can stand in for each. */
export interface AppEnv {
  config: Config;
  api: ApiClient;
  claims: Claims | null;
  /** Leaves the app for another site (Stripe Checkout). */
  leaveTo: (url: string) => void;
  /** Says something through the polite live region (for screen readers). */
  announce: (message: string) => void;
  now: () => Date;
}

export const EnvContext = createContext<AppEnv | null>(null);

export function useEnv(): AppEnv {
  const env = useContext(EnvContext);
  if (env === null) {
    throw new Error("useEnv outside EnvContext");
  }
  return env;
}
