/**
 * The demo, end to end, the way the README tells a user to run it: the
 * sidecar and a simulated guest in a child process; curl fetches the guest's
 * page, the echo service answers over TCP and WebSocket, and Ctrl-C (SIGINT)
 * stops everything and removes the region.
 */
import { assert, assertEquals, assertMatch } from "../../dev_deps.ts";
import { Child } from "../_support/child.ts";

const CURL = ["/usr/bin/curl", "/bin/curl"].find((p) => {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
});
if (!CURL) {
  console.log(
    "demo_test: curl is not installed; the demo's curl check is skipped",
  );
}

Deno.test({
  name:
    "the demo serves the guest's page to curl, echoes over TCP and WebSocket, and stops on Ctrl-C",
  ignore: CURL === undefined,
  async fn() {
    const demo = new Child("demo", new URL("../../mod.ts", import.meta.url), [
      "demo",
      "--http-port",
      "0",
      "--echo-port",
      "0",
      "--ws-port",
      "0",
      "--admin-port",
      "0",
    ]);
    try {
      const web = await demo.waitFor((l) => l.includes("curl http://"), 30_000);
      const page = web.match(/curl (http:\/\/\S+)/)![1]!;
      const echo = (await demo.waitFor((l) =>
        l.includes("Echo over TCP:"), 1000)).split(/\s+/).pop()!;
      const ws = (await demo.waitFor((l) =>
        l.includes("Echo over WebSocket:"), 1000)).split(/\s+/).pop()!;
      const region = (await demo.waitFor((l) =>
        l.includes("region /dev/shm/"), 1000)).match(/region (\S+)\)/)![1]!;

      const curl = await new Deno.Command(CURL!, {
        args: ["-sS", "-m", "10", page],
        stdout: "piped",
        stderr: "piped",
      })
        .output();
      assertEquals(curl.code, 0, new TextDecoder().decode(curl.stderr));
      assertMatch(
        new TextDecoder().decode(curl.stdout),
        /Hello from inside the guest!/,
      );

      const [host, port] = [
        echo.slice(0, echo.lastIndexOf(":")),
        Number(echo.slice(echo.lastIndexOf(":") + 1)),
      ];
      const c = await Deno.connect({ hostname: host, port });
      await c.write(new TextEncoder().encode("hello over tcp"));
      await c.closeWrite();
      const back = new TextDecoder().decode(
        await new Response(readAll(c)).arrayBuffer(),
      );
      c.close();
      assertEquals(back, "hello over tcp");

      const socket = new WebSocket(ws, "binary");
      socket.binaryType = "arraybuffer";
      const reply = await new Promise<string>((resolve, reject) => {
        socket.onopen = () =>
          socket.send(new TextEncoder().encode("hello over websocket"));
        socket.onmessage = (e) =>
          resolve(new TextDecoder().decode(e.data as ArrayBuffer));
        socket.onerror = () =>
          reject(new Error("websocket failed"));
      });
      assertEquals(reply, "hello over websocket");
      const wsClosed = new Promise((r) => (socket.onclose = r));
      socket.close();
      await wsClosed;

      assert(
        Deno.statSync(region).isFile,
        "the region exists while the demo runs",
      );
      const status = await demo.stop("SIGINT");
      assertEquals(status.code, 0);
      assert(demo.lines.some((l) =>
        l.includes("ivsock demo: stopped.")
      ));
      let exists = true;
      try {
        Deno.statSync(region);
      } catch {
        exists = false;
      }
      assertEquals(exists, false, "Ctrl-C removes the region");
    } finally {
      await demo.stop("SIGKILL");
    }
  },
});

/** The connection's bytes to EOF, read with conn.read (conn.readable would close it early). */
function readAll(conn: Deno.Conn): ReadableStream<Uint8Array> {
  return new ReadableStream({
    async pull(controller) {
      const buf = new Uint8Array(4096);
      const n = await conn.read(buf);
      if (n === null) controller.close();
      else controller.enqueue(buf.subarray(0, n));
    },
  });
}
