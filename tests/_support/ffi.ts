/**
 * Loads libc once, when a test module is imported, so that Deno's resource
 * sanitizer does not count the process-wide library handle (which ivsock
 * never closes, by design) as a leak of whichever test first used it.
 *
 * @module
 */

import { libc } from "../../device/shm/_libc.ts";

libc();
