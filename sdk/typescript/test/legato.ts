/** Starts a real `legato up` (LEGATO_BIN, or the debug build in the cargo
 * target directory) on a free port, with its state in a temporary directory. */

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");

export function binary(): string {
  const named = process.env["LEGATO_BIN"];
  if (named !== undefined && named !== "") return named;
  const target = process.env["CARGO_TARGET_DIR"] ?? join(REPO, "target");
  const built = join(target, "debug", "legato");
  if (!existsSync(built)) {
    throw new Error(`no legato binary at ${built}: build it or set LEGATO_BIN`);
  }
  return built;
}

/**
 * The OpenAI-compatible model stand-in (tests/model-standin): started for a
 * test, it answers its `/v1` base URL; `stop` ends it.
 */
export async function modelStandIn(): Promise<{ url: string; stop: () => void }> {
  const named = process.env["LEGATO_MODEL_STANDIN"];
  const path = named !== undefined && named !== "" ? named : join(dirname(binary()), "legato-model-standin");
  if (!existsSync(path)) {
    throw new Error(`no model stand-in at ${path}: cargo build -p legato-model-standin, or set LEGATO_MODEL_STANDIN`);
  }
  const child = spawn(path, [], { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout! });
  const url = await new Promise<string>((resolveUrl) => lines.once("line", resolveUrl));
  return { url: url.trim(), stop: () => child.kill("SIGKILL") };
}

/** The Standard Webhooks secret the test stack signs pushes with. */
export const SIGNING_SECRET = `whsec_${Buffer.from("legato-ts-tests-signing-key-0123456").toString("base64")}`;

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type Doc = { [key: string]: Json };

export class Legato {
  private constructor(
    readonly url: string,
    private readonly child: ChildProcess,
    private readonly dir: string,
  ) {}

  static async start(): Promise<Legato> {
    const dir = mkdtempSync(join(tmpdir(), "legato-ts-"));
    // Push agents on loopback, signed with the tests' secret.
    writeFileSync(
      join(dir, "legato.toml"),
      `[gateway.push]\nallowed_hosts = ["127.0.0.1"]\nsigning_secret = "${SIGNING_SECRET}"\n`,
    );
    const child = spawn(
      binary(),
      ["up", "--port", "0", "--data-dir", dir, "--workflows", join(REPO, "workflows")],
      {
        env: { ...process.env, LEGATO__TELEMETRY__LOG: "warn", LEGATO_CONFIG_DIR: dir },
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    const lines = createInterface({ input: child.stdout! });
    const url = await new Promise<string>((resolveUrl, reject) => {
      const timer = setTimeout(() => reject(new Error("legato up did not start in 120 s")), 120_000);
      lines.on("line", (line) => {
        const at = line.indexOf("listening on ");
        if (at >= 0) {
          clearTimeout(timer);
          resolveUrl(line.slice(at + "listening on ".length).split(" ")[0]!);
        }
      });
      child.once("exit", (code) => reject(new Error(`legato up exited (${code})`)));
    });
    return new Legato(url, child, dir);
  }

  stop(): void {
    this.child.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }

  async call(method: string, path: string, body?: Json): Promise<{ status: number; body: Doc }> {
    const init: RequestInit = { method, headers: { "content-type": "application/json" } };
    if (body !== undefined) init.body = JSON.stringify(body);
    const response = await fetch(`${this.url}${path}`, init);
    const text = await response.text();
    return { status: response.status, body: text === "" ? {} : (JSON.parse(text) as Doc) };
  }

  async putAgent(name: string, spec: Doc = {}): Promise<void> {
    const { status, body } = await this.call("PUT", `/api/v1/agents/${name}`, {
      kind: "pull",
      ...spec,
    });
    if (status !== 200 && status !== 201) throw new Error(`agent ${name}: ${JSON.stringify(body)}`);
  }

  async register(definition: Doc): Promise<void> {
    const { status, body } = await this.call(
      "PUT",
      `/api/v1/workflows/${String(definition["name"])}`,
      definition,
    );
    if (status !== 200 && status !== 201) throw new Error(JSON.stringify(body));
  }

  async start(workflow: string, input: Json): Promise<string> {
    const { status, body } = await this.call("POST", `/api/v1/workflows/${workflow}/instances`, {
      input,
    });
    if (status !== 202) throw new Error(JSON.stringify(body));
    return String(body["id"]);
  }

  async waitForEnd(id: string, timeoutMs = 60_000): Promise<Doc> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { body } = await this.call("GET", `/api/v1/instances/${id}?history=true`);
      if (["Completed", "Failed", "Terminated"].includes(String(body["runtimeStatus"]))) return body;
      if (Date.now() > deadline) throw new Error(`${id} did not end in ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async waitFor(id: string, runtimeStatus: string, timeoutMs = 60_000): Promise<Doc> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { body } = await this.call("GET", `/api/v1/instances/${id}?history=true`);
      if (body["runtimeStatus"] === runtimeStatus) return body;
      if (Date.now() > deadline) {
        throw new Error(`${id} not ${runtimeStatus} in ${timeoutMs} ms: ${JSON.stringify(body)}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export function step(id: string, agent: string, needs: string[], input: Json, extra: Doc = {}): Doc {
  return { id, agent, needs, input, ...extra };
}
