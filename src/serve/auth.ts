/**
 * The server's optional API key: `Authorization: Bearer KEY` on every route but the probes
 * (`/healthz`, `/readyz`, which orchestrators call without credentials). Keys are compared as
 * SHA-256 digests with `timingSafeEqual`: equal lengths, and a time that says nothing about
 * how much of a guess was right.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

import type { FastifyReply, FastifyRequest } from 'fastify';

/** Routes a load balancer or orchestrator probes without credentials. */
export const OPEN_ROUTES: readonly string[] = ['/healthz', '/readyz'];

export class UnauthorizedError extends Error {
  readonly statusCode = 401;
  readonly headers = { 'www-authenticate': 'Bearer realm="motivnet"' };
}

const digest = (text: string) => createHash('sha256').update(text, 'utf8').digest();

/** The bearer token of an Authorization header, or undefined. */
function bearer(header: string | undefined): string | undefined {
  const m = /^Bearer +(\S+) *$/i.exec(header ?? '');
  return m?.[1];
}

/** An onRequest hook refusing requests without the key (401), or undefined when no key is set. */
export function requireApiKey(key: string | undefined) {
  if (key === undefined) return undefined;
  if (key.length < 16 || /\s/.test(key)) throw new RangeError('the API key must be at least 16 characters, without spaces');
  const expected = digest(key);
  return async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (OPEN_ROUTES.includes(request.routeOptions.url ?? '')) return;
    const given = bearer(request.headers.authorization);
    if (given !== undefined && timingSafeEqual(digest(given), expected)) return;
    // The body is not read: the connection closes after the answer.
    reply.header('connection', 'close');
    throw new UnauthorizedError(given === undefined ? 'an API key is required: send Authorization: Bearer KEY' : 'the API key is not valid');
  };
}
