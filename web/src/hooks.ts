import { useCallback, useEffect, useRef, useState } from "react";

import type { Service } from "./api";
import { type CursorStack, FIRST_PAGE, newer, older } from "./cursorStack";
import { useEnv } from "./env";

export const PAGE_SIZE = 20;

export interface Loaded<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload: () => void;
}

/**
 * Runs `load` when `key` changes (and on `reload`), dropping answers to superseded requests
 * so a slow older page never replaces a newer one.
 */
export function useLoad<T>(load: (signal: AbortSignal) => Promise<T>, key: string): Loaded<T> {
  const [state, setState] = useState<{ data: T | undefined; error: unknown; loading: boolean }>({
    data: undefined,
    error: undefined,
    loading: true,
  });
  const [generation, setGeneration] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;

  useEffect(() => {
    const controller = new AbortController();
    setState((previous) => ({ ...previous, loading: true }));
    loadRef.current(controller.signal).then(
      (data) => {
        if (!controller.signal.aborted) {
          setState({ data, error: undefined, loading: false });
        }
      },
      (error: unknown) => {
        if (!controller.signal.aborted) {
          setState({ data: undefined, error, loading: false });
        }
      },
    );
    return () => controller.abort();
  }, [key, generation]);

  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  return { ...state, reload };
}

export interface Paged<T> {
  page: Loaded<T>;
  /** The cursor of the page shown; null for the newest. */
  cursor: string | null;
  stack: CursorStack;
  toOlder: (nextCursor: string) => void;
  toNewer: () => void;
}

/**
 * One newest-first list of a service, `PAGE_SIZE` at a time (`?limit=&cursor=`); back to the
 * newest page whenever `refreshKey` changes (new entries arrived, e.g. a purchase went through).
 */
export function usePaged<T>(service: Service, path: string, refreshKey: number): Paged<T> {
  const { api } = useEnv();
  const [stack, setStack] = useState(FIRST_PAGE);
  const [seenRefresh, setSeenRefresh] = useState(refreshKey);
  if (seenRefresh !== refreshKey) {
    setSeenRefresh(refreshKey);
    setStack(FIRST_PAGE);
  }
  const cursor = stack.current;
  const query = `limit=${PAGE_SIZE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
  const page = useLoad(
    (signal) => api.json<T>(service, `${path}?${query}`, { signal }),
    `${cursor ?? ""}|${refreshKey}`,
  );
  return {
    page,
    cursor,
    stack,
    toOlder: (next) => setStack((s) => older(s, next)),
    toNewer: () => setStack((s) => newer(s)),
  };
}
