import { missingMillicredits, type CreditsQuery } from "../creditsQuery";
import { creditsText } from "../money";

export const NEED_CREDITS_MESSAGE = "You need more credits to continue";

/** The 402 path: why the product sent the user here and, when it said, what is missing. */
export function NeedCredits({ query, resolved }: { query: CreditsQuery; resolved: boolean }) {
  if (!query.cameForCredits || resolved) {
    return null;
  }
  const missing = missingMillicredits(query);
  const { requiredMillicredits: required, currentMillicredits: current } = query;
  return (
    <div className="banner banner-info" data-testid="need-credits">
      <h2 className="banner-title">{NEED_CREDITS_MESSAGE}</h2>
      {required !== null && current !== null && missing !== null ? (
        <p>
          The request needs {creditsText(required)}; you have {creditsText(current)} available.{" "}
          {missing > 0 ? <strong>Add at least {creditsText(missing)}.</strong> : null}
        </p>
      ) : required !== null ? (
        <p>The request needs {creditsText(required)}.</p>
      ) : (
        <p>Your balance does not cover the request. Add credits below, then go back.</p>
      )}
    </div>
  );
}

/** The way back to where the user was; only ever a same-origin path (see returnTo.ts). */
export function BackLink({
  returnTo,
  emphasised,
}: {
  returnTo: string | null;
  emphasised: boolean;
}) {
  if (returnTo === null) {
    return null;
  }
  return (
    <p className={emphasised ? "back back-emphasised" : "back"}>
      <a href={returnTo} data-testid="back-to-return">
        Back to {returnTo}
      </a>
    </p>
  );
}
