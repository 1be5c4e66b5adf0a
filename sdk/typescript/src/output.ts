/**
 * What a task writes (a model's reply as it streams), relayed to the
 * instance's watchers as it comes and never recorded: a watcher who comes
 * later reads the whole text where the task keeps it, its journal and its
 * result.
 */

/** Sends one piece: call, seq, text. */
export type SendOutput = (call: string, seq: number, text: string) => Promise<void>;

/** Characters a piece carries at most: at four bytes each, within the 65,536 bytes the gateway takes. */
export const MAX_PIECE_CHARS = 16_384;

/**
 * One output of an attempt on its way to the instance's watchers: `push`
 * text as it comes, then `await finish()`. Text pushed while one piece is
 * being sent goes together in the next, so a fast model costs a request
 * per round trip, not one per token. A piece that cannot be sent is
 * skipped: watchers miss it, nothing else does.
 */
export class Output {
  private waiting: string[] = [];
  private seq = 0;
  private sending: Promise<void> | undefined;

  constructor(
    private readonly call: string,
    private readonly send: SendOutput,
  ) {}

  push(text: string): void {
    if (text === "") return;
    this.waiting.push(text);
    this.sending ??= this.sendWaiting().finally(() => {
      this.sending = undefined;
    });
  }

  /** Resolves once everything pushed is sent (or could not be). */
  async finish(): Promise<void> {
    while (this.sending !== undefined) await this.sending;
  }

  private async sendWaiting(): Promise<void> {
    while (this.waiting.length > 0) {
      const text = this.waiting.join("");
      this.waiting = [];
      for (let start = 0; start < text.length; start += MAX_PIECE_CHARS) {
        this.seq += 1;
        try {
          await this.send(this.call, this.seq, text.slice(start, start + MAX_PIECE_CHARS));
        } catch {
          // Watchers miss this piece; the whole text is recorded all the same.
        }
      }
    }
  }
}
