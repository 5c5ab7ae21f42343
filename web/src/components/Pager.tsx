import { hasNewer, pageNumber, type CursorStack } from "../cursorStack";

export function Pager({
  stack,
  nextCursor,
  noun,
  testIdPrefix,
  onOlder,
  onNewer,
}: {
  stack: CursorStack;
  nextCursor: string | null | undefined;
  noun: string;
  testIdPrefix: string;
  onOlder: (cursor: string) => void;
  onNewer: () => void;
}) {
  return (
    <div className="pager">
      <button
        type="button"
        disabled={!hasNewer(stack)}
        onClick={onNewer}
        data-testid={`${testIdPrefix}-newer`}
      >
        Newer {noun}
      </button>
      <span className="muted">Page {pageNumber(stack)}</span>
      <button
        type="button"
        disabled={!nextCursor}
        onClick={() => nextCursor && onOlder(nextCursor)}
        data-testid={`${testIdPrefix}-older`}
      >
        Older {noun}
      </button>
    </div>
  );
}
