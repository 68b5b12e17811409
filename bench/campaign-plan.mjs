// The edits of a simulated campaign, shared by bench/campaign-sim.mjs (the keep rule alone) and
// bench/campaign-server.mjs (the real server): each edit has a true effect on val_bpb in units of
// the seed-to-seed sigma, negative = better. A share p_real of the edits has a real effect (60 %
// of those help, by 0.5 to 4 sigma; 40 % hurt by as much); the rest change nothing the metric
// depends on, so keeping one is a false keep.

/** A small seeded generator (mulberry32): the same campaign for both rules. */
export function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A standard normal draw (Box-Muller). */
export function gauss(rand) {
  return Math.sqrt(-2 * Math.log(rand() || 1e-12)) * Math.cos(2 * Math.PI * rand());
}

/** Effects of `count` edits in sigma units (0 = no effect), the same for every rule given the seed. */
export function campaignEffects(seed, count, pReal) {
  const rand = rng(seed * 7919 + 1);
  return Array.from({ length: count }, () => {
    if (rand() >= pReal) return 0;
    const size = 0.5 + 3.5 * rand();
    return rand() < 0.6 ? -size : size;
  });
}
