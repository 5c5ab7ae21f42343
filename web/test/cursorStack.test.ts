import { describe, expect, it } from "vitest";

import { FIRST_PAGE, hasNewer, newer, older, pageNumber } from "../src/cursorStack";

describe("cursor stack", () => {
  it("starts on the newest page with nothing newer", () => {
    expect(FIRST_PAGE.current).toBeNull();
    expect(hasNewer(FIRST_PAGE)).toBe(false);
    expect(pageNumber(FIRST_PAGE)).toBe(1);
  });

  it("walks back the way it came", () => {
    const page2 = older(FIRST_PAGE, "c1");
    const page3 = older(page2, "c2");
    expect(page3.current).toBe("c2");
    expect(pageNumber(page3)).toBe(3);
    const back2 = newer(page3);
    expect(back2.current).toBe("c1");
    expect(hasNewer(back2)).toBe(true);
    const back1 = newer(back2);
    expect(back1.current).toBeNull();
    expect(hasNewer(back1)).toBe(false);
  });

  it("stays on the newest page when asked for newer", () => {
    expect(newer(FIRST_PAGE)).toBe(FIRST_PAGE);
  });

  it("does not change the stack it was given", () => {
    const page2 = older(FIRST_PAGE, "c1");
    older(page2, "c2");
    expect(page2).toEqual({ current: "c1", newer: [null] });
  });
});
