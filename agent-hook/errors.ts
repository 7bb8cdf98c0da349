// Failures that end the agent, with the exit code the CLI contract gives them
// (DESIGN.md section 7: 1 error, 2 usage, 4 not authenticated or not allowed).
export class AgentError extends Error {
  override readonly name = 'AgentError';
  constructor(
    message: string,
    readonly exitCode: 1 | 2 | 4 = 1,
  ) {
    super(message);
  }
}
