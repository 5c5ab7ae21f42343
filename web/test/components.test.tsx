import { cleanup, render, screen, within } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";

import { parseCreditsQuery } from "../src/creditsQuery";
import {
  KillSwitchBanner,
  PAUSED_MESSAGE,
  purchasesOpen,
} from "../src/components/KillSwitchBanner";
import { BackLink, NeedCredits } from "../src/components/NeedCredits";
import { FEATURES_ON as ON } from "./backend";

afterEach(cleanup);


describe("KillSwitchBanner", () => {
  it("says billing is paused when the master switch is off", () => {
    render(<KillSwitchBanner features={{ ...ON, billingEnabled: false }} />);
    expect(screen.getByRole("status")).toHaveProperty("textContent", PAUSED_MESSAGE);
    expect(PAUSED_MESSAGE).toBe("Billing is paused. AI features remain available with no charges.");
  });

  it("says so too when only charging is off", () => {
    render(<KillSwitchBanner features={{ ...ON, chargingEnabled: false }} />);
    expect(screen.getByRole("status").textContent).toContain("AI features remain available");
  });

  it("stays away while billing runs or the switches are unknown", () => {
    const { rerender } = render(<KillSwitchBanner features={ON} />);
    expect(screen.queryByRole("status")).toBeNull();
    rerender(<KillSwitchBanner features={{ ...ON, purchasesEnabled: false }} />);
    expect(screen.queryByRole("status")).toBeNull();
    rerender(<KillSwitchBanner features={undefined} />);
    expect(screen.queryByRole("status")).toBeNull();
  });

  it("closes purchases when either purchases or billing is off", () => {
    expect(purchasesOpen(ON)).toBe(true);
    expect(purchasesOpen(undefined)).toBe(true);
    expect(purchasesOpen({ ...ON, purchasesEnabled: false })).toBe(false);
    expect(purchasesOpen({ ...ON, billingEnabled: false })).toBe(false);
    expect(purchasesOpen({ ...ON, chargingEnabled: false })).toBe(true);
  });
});

describe("NeedCredits (the 402 path)", () => {
  it("says what is missing when the product passed the amounts", () => {
    const query = parseCreditsQuery("?returnTo=%2Fchat&required=60000&current=12500");
    render(<NeedCredits query={query} resolved={false} />);
    const box = screen.getByTestId("need-credits");
    expect(
      within(box).getByRole("heading", { name: "You need more credits to continue" }),
    ).toBeTruthy();
    expect(box.textContent).toContain(
      "The request needs 60 credits; you have 12.5 credits available.",
    );
    expect(box.textContent).toContain("Add at least 47.5 credits.");
  });

  it("keeps to the general message without amounts", () => {
    render(<NeedCredits query={parseCreditsQuery("?returnTo=%2Fchat")} resolved={false} />);
    const box = screen.getByTestId("need-credits");
    expect(box.textContent).toContain("You need more credits to continue");
    expect(box.textContent).not.toContain("Add at least");
  });

  it("is not shown to a user who came on their own, nor after a purchase went through", () => {
    const { rerender } = render(<NeedCredits query={parseCreditsQuery("")} resolved={false} />);
    expect(screen.queryByTestId("need-credits")).toBeNull();
    rerender(<NeedCredits query={parseCreditsQuery("?returnTo=%2Fchat")} resolved={true} />);
    expect(screen.queryByTestId("need-credits")).toBeNull();
  });

  it("offers the way back only to a same-origin path", () => {
    const { rerender } = render(<BackLink returnTo="/chat?x=1" emphasised={false} />);
    const link = screen.getByRole("link", { name: "Back to /chat?x=1" });
    expect(link.getAttribute("href")).toBe("/chat?x=1");
    const unsafe = parseCreditsQuery("?returnTo=https%3A%2F%2Fevil.test").returnTo;
    rerender(<BackLink returnTo={unsafe} emphasised={false} />);
    expect(screen.queryByRole("link")).toBeNull();
  });
});
