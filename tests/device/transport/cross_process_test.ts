/**
 * The device in one process, the driver in another, over a /dev/shm file:
 * data moves both ways, then each side is killed with SIGKILL and started
 * again in turn, and the other side recovers without restarting.
 */
import { assert, assertEquals } from "../../../dev_deps.ts";
import { Child } from "../../_support/child.ts";

const DEVICE = new URL("./_device_child.ts", import.meta.url);
const DRIVER = new URL("./_driver_child.ts", import.meta.url);
const TIMEOUT_MS = "400";
const STEP_MS = 20_000;

function progress(line: string): number {
  return line.startsWith("progress ") ? Number(line.slice(9)) : -1;
}

Deno.test({
  name:
    "device and driver processes each survive the other being killed and restarted",
  async fn() {
    const path = `/dev/shm/ivsock-test-xproc-${Deno.pid}`;
    const children: Child[] = [];
    const spawn = (name: string, script: URL, args: string[]) => {
      const c = new Child(name, script, args);
      children.push(c);
      return c;
    };
    try {
      let device = spawn("device", DEVICE, [path, TIMEOUT_MS]);
      await device.waitFor((l) => l.startsWith("ready"), STEP_MS);
      const driver = spawn("driver", DRIVER, [
        path,
        String(48 << 20),
        TIMEOUT_MS,
      ]);
      await driver.waitFor((l) => progress(l) >= 2 << 20, STEP_MS);

      // 1. Kill the device; start it again. The driver renegotiates by itself.
      await device.stop("SIGKILL");
      const mark = driver.lines.length;
      device = spawn("device", DEVICE, [path, TIMEOUT_MS]);
      assertEquals(
        await device.waitFor((l) => l.startsWith("ready"), STEP_MS),
        "ready 2",
      );
      await driver.waitFor((l) => l === "activated", STEP_MS, mark);
      await driver.waitFor((l) => l === "event 0", STEP_MS, mark); // TRANSPORT_RESET
      const before = Math.max(...driver.lines.map(progress));
      await driver.waitFor((l) => progress(l) > before + (2 << 20), STEP_MS);
      assert(
        driver.lines.slice(mark).some((l) =>
          l.startsWith("deactivated device restarted")
        ),
        `driver saw the restart: ${driver.lines.slice(mark).join(" | ")}`,
      );

      // 2. Kill the driver; the device notices and takes a new one.
      await driver.stop("SIGKILL");
      await device.waitFor(
        (l) => l.startsWith("deactivated guest driver stopped responding"),
        STEP_MS,
      );
      const deviceMark = device.lines.length;
      const driver2 = spawn("driver", DRIVER, [
        path,
        String(8 << 20),
        TIMEOUT_MS,
      ]);
      assertEquals(
        await driver2.waitFor((l) => l.startsWith("done"), STEP_MS * 2),
        "done ok",
      );
      assert(
        device.lines.slice(deviceMark).includes("activated"),
        "the same device took the new driver",
      );

      const d = await device.stop();
      const g = await driver2.stop();
      assertEquals([d.code, g.code], [0, 0], "both stop cleanly on SIGTERM");
    } finally {
      for (const c of children) await c.stop("SIGKILL");
      await Deno.remove(path).catch(() => {});
    }
  },
});
