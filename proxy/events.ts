/**
 * The sidecar's event stream: connections opening and closing, refusals,
 * resets, route and device changes. The admin API serves it as SSE; the
 * logger and metrics read it too.
 *
 * @module
 */

/** One event. `time` is `Date.now()`. */
export type ProxyEvent =
  | {
    type: "connect";
    time: number;
    connection: string;
    route: string;
    remote: string;
  }
  | {
    type: "close";
    time: number;
    connection: string;
    route: string;
    outcome: string;
    bytesToGuest: number;
    bytesFromGuest: number;
  }
  | {
    type: "deny";
    time: number;
    route: string;
    remote: string;
    reason: string;
  }
  | {
    type: "reset";
    time: number;
    connection: string;
    route: string;
    by: "guest" | "peer" | "admin";
  }
  | {
    type: "route";
    time: number;
    route: string;
    change: "added" | "replaced" | "removed" | "enabled" | "disabled";
  }
  | { type: "device"; time: number; state: string; reason: string };

/** Distributive Omit, so each event keeps its own fields. */
export type NewEvent = ProxyEvent extends infer E
  ? E extends ProxyEvent ? Omit<E, "time"> : never
  : never;

/** A minimal synchronous publish/subscribe. */
export class EventBus {
  #listeners = new Set<(e: ProxyEvent) => void>();

  /** Subscribes; returns the function that unsubscribes. */
  subscribe(listener: (e: ProxyEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  emit(event: NewEvent): void {
    const e = { ...event, time: Date.now() } as ProxyEvent;
    for (const l of this.#listeners) {
      try {
        l(e);
      } catch {
        // A failing subscriber must not break the data path.
      }
    }
  }
}
