/**
 * One live progress line per run. On a terminal it redraws in place; elsewhere (CI logs, pipes)
 * it prints a line at each 25 % so logs stay short.
 */
export class ProgressBar {
  private label = '';
  private lastQuarter = -1;
  private active = false;

  constructor(
    private readonly out: NodeJS.WriteStream,
    private readonly width = 28,
  ) {}

  start(label: string): void {
    this.label = label;
    this.lastQuarter = -1;
    this.active = true;
    this.update(0, 'queued');
  }

  update(percent: number, message?: string): void {
    if (!this.active) return;
    const clamped = Math.max(0, Math.min(100, percent));
    const filled = Math.round((clamped / 100) * this.width);
    const detail = message ? shortDetail(message) : '';
    if (this.out.isTTY) {
      const bar = '█'.repeat(filled) + '░'.repeat(this.width - filled);
      const line = `${this.label.slice(0, 40).padEnd(40)} ${bar} ${clamped.toFixed(0).padStart(3)}% ${detail}`;
      this.out.write(`\r\x1b[2K${line.slice(0, (this.out.columns ?? 120) - 1)}`);
      return;
    }
    const quarter = Math.floor(clamped / 25);
    if (quarter > this.lastQuarter) {
      this.lastQuarter = quarter;
      this.out.write(`  ${this.label}: ${clamped.toFixed(0)}% ${detail}\n`);
    }
  }

  stop(): void {
    if (this.active && this.out.isTTY) this.out.write('\r\x1b[2K');
    this.active = false;
  }
}

/** "experiment 3: step 120, 45.0% of budget, loss 3.2100" -> "step 120 loss 3.2100" */
function shortDetail(message: string): string {
  const step = /step (\d+)/.exec(message)?.[1];
  const loss = /loss ([\d.]+)/.exec(message)?.[1];
  return step ? `step ${step}${loss ? ` loss ${loss}` : ''}` : message;
}
