// Takes a PNG of a report in headless Chromium (Debian's /usr/bin/chromium), e.g. for docs/:
//   node scripts/screenshot-report.mjs WORKSPACE/.autoresearch/report.html docs/report.png
import { chromium } from 'playwright-core';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [html, png, width = '1280'] = process.argv.slice(2);
if (!html || !png) {
  process.stderr.write('usage: node scripts/screenshot-report.mjs REPORT.html OUT.png [WIDTH]\n');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: Number(width), height: 900 } });
  await page.goto(pathToFileURL(resolve(html)).href);
  await page.screenshot({ path: resolve(png), fullPage: false, clip: { x: 0, y: 0, width: Number(width), height: 1100 } });
} finally {
  await browser.close();
}
process.stderr.write(`screenshot: ${png}\n`);
