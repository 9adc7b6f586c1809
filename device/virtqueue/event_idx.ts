/**
 * VIRTIO_F_EVENT_IDX arithmetic (virtio 1.3, 2.7.10): whether moving an index
 * from `oldIdx` to `newIdx` crossed the event index the other side asked to
 * be told about.
 *
 * @module
 */

/**
 * `vring_need_event()`: true when `eventIdx` lies in `[oldIdx, newIdx)`,
 * counting in free-running u16s.
 */
export function needEvent(
  eventIdx: number,
  newIdx: number,
  oldIdx: number,
): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
