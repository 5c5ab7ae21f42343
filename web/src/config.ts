/**
 * Runtime configuration, fetched from `/config.json` on the page's own origin so that one
 * build serves every deployment. A base URL of "" means the page's own origin (the services
 * behind the same ingress).
 */

export interface Config {
  checkoutUrl: string;
  ledgerUrl: string;
  meteringUrl: string;
  reconcilerUrl: string;
  pricingUrl: string;
  termsUrl: string;
  refundPolicyUrl: string;
  /** Development only: accept `/credits#token=<JWT>`. */
  dev: boolean;
  /** The host product's name, for "Sign in from <product>". */
  productName: string;
}

const URL_FIELDS = [
  "checkoutUrl",
  "ledgerUrl",
  "meteringUrl",
  "reconcilerUrl",
  "pricingUrl",
  "termsUrl",
  "refundPolicyUrl",
] as const;

export const DEFAULT_PRODUCT_NAME = "your product";

export class ConfigError extends Error {
  override name = "ConfigError";
}

function checkedUrl(field: string, value: unknown): string {
  if (value === undefined || value === null || value === "") {
    return "";
  }
  if (typeof value !== "string") {
    throw new ConfigError(`${field} must be a string`);
  }
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new ConfigError(`${field} must be an absolute URL or ""`);
  }
  if (parsed.protocol !== "https:" && parsed.protocol !== "http:") {
    throw new ConfigError(`${field} must be an http(s) URL`);
  }
  return value.replace(/\/+$/, "");
}

export function parseConfig(raw: unknown): Config {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError("config.json must hold a JSON object");
  }
  const source = raw as Record<string, unknown>;
  const urls = Object.fromEntries(
    URL_FIELDS.map((field) => [field, checkedUrl(field, source[field])]),
  ) as Record<(typeof URL_FIELDS)[number], string>;
  const productName =
    typeof source.productName === "string" && source.productName.trim()
      ? source.productName.trim()
      : DEFAULT_PRODUCT_NAME;
  return { ...urls, dev: source.dev === true, productName };
}

export async function loadConfig(fetcher: typeof fetch = fetch): Promise<Config> {
  const response = await fetcher("/config.json", { cache: "no-store" });
  if (!response.ok) {
    throw new ConfigError(`/config.json answered ${response.status}`);
  }
  return parseConfig(await response.json());
}
