import { useCallback, useEffect, useMemo, useState } from "react";

import { parseCreditsQuery, withoutCheckoutParams } from "../creditsQuery";
import { useEnv } from "../env";
import { useLoad } from "../hooks";
import { navigate } from "../router";
import type { Balance, Features, Package } from "../types";
import { BalancePanel } from "./BalancePanel";
import { CheckoutStatus } from "./CheckoutReturn";
import { History } from "./History";
import { KillSwitchBanner, purchasesOpen } from "./KillSwitchBanner";
import { Monthly } from "./Monthly";
import { BackLink, NeedCredits } from "./NeedCredits";
import { Packages } from "./Packages";
import { Purchases } from "./Purchases";

export function CreditsPage({ pathname, search }: { pathname: string; search: string }) {
  const { api } = useEnv();
  // Read once: the address bar is cleaned below, the page keeps what it said.
  const [query] = useState(() => parseCreditsQuery(search));
  const [refreshKey, setRefreshKey] = useState(0);
  const [fulfilled, setFulfilled] = useState(false);

  useEffect(() => {
    const params = new URLSearchParams(search);
    if (params.has("checkout") || params.has("purchase")) {
      navigate(`${pathname}${withoutCheckoutParams(search)}`, { replace: true });
    }
  }, [pathname, search]);

  const features = useLoad(
    (signal) => api.json<Features>("checkout", "/api/v1/meta/features", { signal }),
    "features",
  );
  const balance = useLoad(
    (signal) => api.json<Balance>("ledger", "/api/balance", { signal }),
    `balance|${refreshKey}`,
  );
  const packages = useLoad(
    (signal) => api.json<Package[]>("checkout", "/api/packages", { signal }),
    "packages",
  );
  const packageNames = useMemo(
    () => Object.fromEntries((packages.data ?? []).map((p) => [p.code, p.name])),
    [packages.data],
  );

  const onFulfilled = useCallback(() => {
    setFulfilled(true);
    setRefreshKey((k) => k + 1);
  }, []);

  return (
    <>
      <h1>Credits</h1>
      <KillSwitchBanner features={features.data} />
      <CheckoutStatus checkout={query.checkout} onFulfilled={onFulfilled} />
      <NeedCredits query={query} resolved={fulfilled} />
      <BackLink returnTo={query.returnTo} emphasised={fulfilled} />
      <div className="columns">
        <BalancePanel balance={balance} />
        <Packages
          packages={packages}
          purchasesOpen={purchasesOpen(features.data)}
          returnTo={query.returnTo}
        />
      </div>
      <History refreshKey={refreshKey} />
      <Purchases refreshKey={refreshKey} packageNames={packageNames} />
      <Monthly />
    </>
  );
}
