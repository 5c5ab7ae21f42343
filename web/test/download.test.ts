import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { saveBlob, statementFilename, statementPath } from "../src/download";

describe("statements", () => {
  it("names the ledger's paths and the saved files by month", () => {
    expect(statementPath("2025-01", "csv")).toBe("/api/statements/2025-01.csv");
    expect(statementPath("2025-01", "pdf")).toBe("/api/statements/2025-01.pdf");
    expect(statementFilename("2025-01", "pdf")).toBe("statement-2025-01.pdf");
  });
});

describe("saveBlob", () => {
  beforeEach(() => {
    vi.useFakeTimers();
    URL.createObjectURL = vi.fn(() => "blob:http://localhost/1234");
    URL.revokeObjectURL = vi.fn();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("clicks a temporary download link for the blob and revokes its URL later", () => {
    const clicked: { href: string; download: string; inDocument: boolean }[] = [];
    const click = vi.spyOn(HTMLAnchorElement.prototype, "click").mockImplementation(function (
      this: HTMLAnchorElement,
    ) {
      clicked.push({ href: this.href, download: this.download, inDocument: this.isConnected });
    });
    const blob = new Blob(["a,b"], { type: "text/csv" });
    saveBlob(blob, "statement-2025-01.csv");
    expect(URL.createObjectURL).toHaveBeenCalledWith(blob);
    expect(click).toHaveBeenCalledTimes(1);
    expect(clicked).toEqual([
      { href: "blob:http://localhost/1234", download: "statement-2025-01.csv", inDocument: true },
    ]);
    expect(document.querySelectorAll("a[download]")).toHaveLength(0);
    expect(URL.revokeObjectURL).not.toHaveBeenCalled();
    vi.runAllTimers();
    expect(URL.revokeObjectURL).toHaveBeenCalledWith("blob:http://localhost/1234");
  });
});
