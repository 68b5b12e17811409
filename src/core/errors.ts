/** An error the caller (often a model) can act on: says what was wrong and what to do next. */
export class UserError extends Error {}
