/**
 * Statements need the bearer token, which a plain link cannot send, so they are fetched
 * and handed to the browser as a Blob behind a temporary object URL.
 */

export type StatementFormat = "csv" | "pdf";

export function statementPath(month: string, format: StatementFormat): string {
  return `/api/statements/${month}.${format}`;
}

export function statementFilename(month: string, format: StatementFormat): string {
  return `statement-${month}.${format}`;
}

// Long enough for the browser to start reading the Blob; revoking at once can cancel it.
const REVOKE_AFTER_MS = 60_000;

export function saveBlob(blob: Blob, filename: string, doc: Document = document): void {
  const url = URL.createObjectURL(blob);
  const link = doc.createElement("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  doc.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), REVOKE_AFTER_MS);
}
