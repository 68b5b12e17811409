/** An error the caller (often a model) can act on: says what was wrong and what to do next. */
export class UserError extends Error {}

/** Bad command-line input or a bad input file: the CLI prints the message and exits 2. */
export class UsageError extends Error {}
