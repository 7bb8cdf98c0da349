// Response shapes of the API, as the CLI reads them: derived from the server's schemas.
import type { z } from 'zod';
import type { botTokenView, botView, memberView, orchestratorView, projectView, revokedCountView, userListView, userTokenView, userView } from '../ca/api/schemas.js';

export type UserView = z.output<typeof userView>;
export type UserListView = z.output<typeof userListView>;
export type UserTokenView = z.output<typeof userTokenView>;
export type ProjectView = z.output<typeof projectView>;
export type MemberView = z.output<typeof memberView>;
export type BotView = z.output<typeof botView>;
export type BotTokenView = z.output<typeof botTokenView>;
export type OrchestratorView = z.output<typeof orchestratorView>;
export type RevokedCountView = z.output<typeof revokedCountView>;
