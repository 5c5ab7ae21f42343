import {
  useCallback,
  useEffect,
  useMemo,
  useRef,
  useState,
  type MouseEvent,
  type ReactNode,
} from "react";

import { ApiClient } from "../api";
import { decodeJwtPayload, isAdmin, isExpired, type TokenStore } from "../auth";
import type { Config } from "../config";
import { EnvContext, type AppEnv } from "../env";
import { useLoad } from "../hooks";
import { ADMIN_PATH, CREDITS_PATH } from "../returnTo";
import { navigate, normalisePath, useLocation } from "../router";
import type { Features } from "../types";
import { AdminPage } from "./AdminPage";
import { CreditsPage } from "./CreditsPage";
import { KillSwitchBanner } from "./KillSwitchBanner";

export interface AppProps {
  config: Config;
  tokens: TokenStore;
  /** Asks the embedding host for a fresh token (when framed). */
  requestToken?: () => void;
  leaveTo?: (url: string) => void;
  fetch?: typeof fetch;
  now?: () => Date;
}

function useToken(tokens: TokenStore): string | null {
  const [token, setToken] = useState(tokens.get());
  useEffect(() => {
    setToken(tokens.get());
    return tokens.subscribe(setToken);
  }, [tokens]);
  return token;
}

function NavLink({
  href,
  current,
  children,
}: {
  href: string;
  current: boolean;
  children: ReactNode;
}) {
  function onClick(event: MouseEvent<HTMLAnchorElement>) {
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) {
      return;
    }
    event.preventDefault();
    navigate(href);
  }
  return (
    <a href={href} aria-current={current ? "page" : undefined} onClick={onClick}>
      {children}
    </a>
  );
}

export function SignInRequired({ productName }: { productName: string }) {
  return (
    <div className="panel" data-testid="sign-in-required">
      <h1>Sign in from {productName}</h1>
      <p>
        Open the Credits page from {productName} while signed in to see your balance and buy
        credits. If you were signed in, your session may have ended: sign in again there.
      </p>
    </div>
  );
}

function PausedBannerOnly({ api }: { api: ApiClient }) {
  // Before sign-in the switches still tell the user that AI is free for now.
  const features = useLoad(
    (signal) => api.json<Features>("checkout", "/api/v1/meta/features", { signal }),
    "features",
  );
  return <KillSwitchBanner features={features.data} />;
}

function NotFound() {
  return (
    <>
      <h1>Page not found</h1>
      <p>
        <a href={CREDITS_PATH}>Go to your credits</a>
      </p>
    </>
  );
}

export function App({ config, tokens, requestToken, leaveTo, fetch, now }: AppProps) {
  const token = useToken(tokens);
  const tokenRef = useRef(token);
  tokenRef.current = token;
  const { pathname, search } = useLocation();
  const path = normalisePath(pathname);
  const [announcement, setAnnouncement] = useState("");
  const mainRef = useRef<HTMLElement>(null);

  const claims = useMemo(() => (token ? decodeJwtPayload(token) : null), [token]);
  const signedIn = claims !== null && !isExpired(claims, (now ?? (() => new Date()))().getTime());

  const api = useMemo(
    () =>
      new ApiClient({
        config,
        getToken: () => tokenRef.current,
        onUnauthorized: () => {
          tokens.clear();
          requestToken?.();
        },
        ...(fetch ? { fetch } : {}),
      }),
    [config, tokens, requestToken, fetch],
  );

  const announcing = useRef<number | undefined>(undefined);
  const announce = useCallback((message: string) => {
    // Cleared first so the same message twice is still announced.
    setAnnouncement("");
    window.clearTimeout(announcing.current);
    announcing.current = window.setTimeout(() => setAnnouncement(message), 50);
  }, []);
  // An announcement still pending when the page goes away is dropped, not set on nothing.
  useEffect(() => () => window.clearTimeout(announcing.current), []);

  const env: AppEnv = useMemo(
    () => ({
      config,
      api,
      claims,
      leaveTo: leaveTo ?? ((url: string) => window.location.assign(url)),
      announce,
      now: now ?? (() => new Date()),
    }),
    [config, api, claims, leaveTo, announce, now],
  );

  useEffect(() => {
    if (path === "/") {
      navigate(CREDITS_PATH, { replace: true });
    }
  }, [path]);

  const onAdmin = path === ADMIN_PATH;
  useEffect(() => {
    document.title = onAdmin ? "Credits admin" : "Credits";
  }, [onAdmin]);

  let page: ReactNode;
  if (!signedIn) {
    page = (
      <>
        <PausedBannerOnly api={api} />
        <SignInRequired productName={config.productName} />
      </>
    );
  } else if (path === CREDITS_PATH) {
    page = <CreditsPage key="credits" pathname={pathname} search={search} />;
  } else if (onAdmin) {
    page = <AdminPage />;
  } else {
    page = <NotFound />;
  }

  return (
    <EnvContext.Provider value={env}>
      <a
        className="skip-link"
        href="#main"
        onClick={(event) => {
          event.preventDefault();
          mainRef.current?.focus();
        }}
      >
        Skip to main content
      </a>
      <header className="site-header">
        <p className="brand">Credits</p>
        <nav aria-label="Billing">
          <ul>
            <li>
              <NavLink href={CREDITS_PATH} current={path === CREDITS_PATH}>
                Your credits
              </NavLink>
            </li>
            {signedIn && isAdmin(claims) ? (
              <li>
                <NavLink href={ADMIN_PATH} current={onAdmin}>
                  Admin
                </NavLink>
              </li>
            ) : null}
          </ul>
        </nav>
        {signedIn && claims?.sub ? (
          <p className="who">
            Signed in as <span data-testid="user-id">{claims.sub}</span>
          </p>
        ) : null}
      </header>
      <main id="main" ref={mainRef} tabIndex={-1}>
        {page}
      </main>
      <div className="visually-hidden" role="status" aria-live="polite" data-testid="announcer">
        {announcement}
      </div>
    </EnvContext.Provider>
  );
}
