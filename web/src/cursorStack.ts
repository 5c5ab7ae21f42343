/**
 * Paging through a newest-first list whose API only knows "the page after this cursor":
 * going to older pages pushes the current cursor, so "Newer" can pop back to it.
 */

export interface CursorStack {
  /** The cursor of the page shown; null is the first (newest) page. */
  readonly current: string | null;
  /** The cursors of the newer pages, the nearest last. */
  readonly newer: readonly (string | null)[];
}

export const FIRST_PAGE: CursorStack = { current: null, newer: [] };

export function older(stack: CursorStack, nextCursor: string): CursorStack {
  return { current: nextCursor, newer: [...stack.newer, stack.current] };
}

export function newer(stack: CursorStack): CursorStack {
  if (stack.newer.length === 0) {
    return stack;
  }
  return { current: stack.newer[stack.newer.length - 1] ?? null, newer: stack.newer.slice(0, -1) };
}

export function hasNewer(stack: CursorStack): boolean {
  return stack.newer.length > 0;
}

/** 1 for the newest page. */
export function pageNumber(stack: CursorStack): number {
  return stack.newer.length + 1;
}
