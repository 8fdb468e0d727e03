/**
 * `GET /openapi.json`: the server's routes as an OpenAPI 3.1 document, with this server's
 * limits and classes filled in, for client generators and API gateways.
 */

export interface OpenApiFacts {
  version: string;
  classes: readonly string[];
  bodyLimit: number;
  maxImages: number;
  apiKey: boolean;
}

const error = { $ref: '#/components/schemas/Error' };
const errorResponse = (description: string) => ({ description, content: { 'application/json': { schema: error } } });

export function openApiDocument(facts: OpenApiFacts): object {
  const probabilities = {
    type: 'object',
    description: 'Every class, in class order, with its probability',
    properties: Object.fromEntries(facts.classes.map((c) => [c, { type: 'number', minimum: 0, maximum: 1 }])),
    required: [...facts.classes],
  };
  const prediction = {
    type: 'object',
    properties: { label: { type: 'string', enum: [...facts.classes] }, probabilities },
    required: ['label', 'probabilities'],
  };
  const box = {
    type: 'object',
    description: 'Pixels of the upright image (after EXIF orientation)',
    properties: { x: { type: 'number' }, y: { type: 'number' }, width: { type: 'number' }, height: { type: 'number' } },
    required: ['x', 'y', 'width', 'height'],
  };
  const facePrediction = {
    type: 'object',
    properties: {
      box,
      score: { type: 'number', minimum: 0, maximum: 1, description: "The detector's confidence that this is a face" },
      label: { type: 'string', enum: [...facts.classes] },
      index: { type: 'integer', minimum: 0 },
      probabilities,
    },
    required: ['box', 'score', 'label', 'index', 'probabilities'],
  };
  const facesPrediction = {
    type: 'object',
    description: 'With faces=detect: every face found, best detected first ([] when there is none)',
    properties: { faces: { type: 'array', items: facePrediction }, width: { type: 'integer' }, height: { type: 'integer' } },
    required: ['faces', 'width', 'height'],
  };
  const anyPrediction = { oneOf: [prediction, facesPrediction] };
  const withModel = { model: { type: 'string' }, latencyMs: { type: 'number' } };
  const closed = { security: [] as object[] };
  const guarded = facts.apiKey ? {} : closed;
  const common = {
    ...(facts.apiKey ? { 401: errorResponse('No API key, or not the right one') } : {}),
  };
  return {
    openapi: '3.1.0',
    info: { title: 'motivnet', version: facts.version, description: 'Facial emotion recognition (MotivNet) over HTTP' },
    ...(facts.apiKey ? { security: [{ bearer: [] }] } : {}),
    paths: {
      '/v1/predict': {
        post: {
          ...guarded,
          summary: 'Classify the emotion of the face in each image',
          parameters: [
            { name: 'geometry', in: 'query', schema: { type: 'string', enum: ['letterbox', 'stretch'] }, description: "How an image meets the model's input size; letterbox is the reference's" },
            {
              name: 'faces',
              in: 'query',
              schema: { type: 'string', pattern: '^(whole|detect|[0-9.]+,[0-9.]+,[0-9.]+,[0-9.]+)$' },
              description: 'whole: the image as it is (default); detect: every face found, each classified; or a face box x,y,width,height in pixels of the upright image',
            },
            { name: 'box', in: 'query', schema: { type: 'string', pattern: '^[0-9.]+,[0-9.]+,[0-9.]+,[0-9.]+$' }, description: 'Face box x,y,width,height in pixels of the upright image (as faces=x,y,width,height)' },
            { name: 'smallFaces', in: 'query', schema: { type: 'boolean' }, description: 'With faces=detect: also look for small faces in tiles of the image (slower)' },
            { name: 'upright', in: 'query', schema: { type: 'boolean' }, description: 'With faces=detect: turn each face so its eyes are level' },
            { name: 'maxFaces', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 1000 }, description: 'With faces=detect: at most this many faces, best first' },
            { name: 'minScore', in: 'query', schema: { type: 'number', minimum: 0.5, maximum: 1 }, description: "With faces=detect: leave out faces the detector scores below this" },
            { name: 'margin', in: 'query', schema: { type: 'number', minimum: 0, maximum: 4 }, description: "With faces=detect: the crop's margin around a face box, a fraction of its larger side on each side" },
          ],
          requestBody: {
            required: true,
            description: `One image as the body (at most ${facts.bodyLimit} bytes), or a form with up to ${facts.maxImages} files in the field \`image\``,
            content: {
              'image/jpeg': { schema: { type: 'string', format: 'binary' } },
              'image/png': { schema: { type: 'string', format: 'binary' } },
              'image/webp': { schema: { type: 'string', format: 'binary' } },
              'application/octet-stream': { schema: { type: 'string', format: 'binary' } },
              'multipart/form-data': {
                schema: { type: 'object', properties: { image: { type: 'array', items: { type: 'string', format: 'binary' }, maxItems: facts.maxImages } }, required: ['image'] },
              },
            },
          },
          responses: {
            200: {
              description: 'One prediction for one image; for a form with several images, `predictions` in their order, each a prediction or an error',
              content: {
                'application/json': {
                  schema: {
                    oneOf: [
                      { type: 'object', properties: { ...prediction.properties, ...withModel }, required: [...prediction.required, 'model', 'latencyMs'] },
                      { type: 'object', properties: { ...facesPrediction.properties, ...withModel }, required: [...facesPrediction.required, 'model', 'latencyMs'] },
                      {
                        type: 'object',
                        properties: {
                          predictions: { type: 'array', items: { oneOf: [...anyPrediction.oneOf, { type: 'object', properties: { error }, required: ['error'] }] } },
                          ...withModel,
                        },
                        required: ['predictions', 'model', 'latencyMs'],
                      },
                    ],
                  },
                },
              },
            },
            400: errorResponse('Not a usable request or image'),
            ...common,
            408: errorResponse('The request took too long to arrive'),
            413: errorResponse('Body, image or form beyond the limits'),
            415: errorResponse('Not JPEG, PNG or WebP'),
            429: errorResponse('The queue is full: retry after Retry-After seconds'),
            503: errorResponse('Timed out in the queue, or shutting down'),
          },
        },
      },
      '/v1/model': {
        get: {
          ...guarded,
          summary: "The model's name, classes, config, parameter count, batching and limits",
          responses: { 200: { description: 'The model', content: { 'application/json': { schema: { type: 'object' } } } }, ...common },
        },
      },
      '/healthz': { get: { ...closed, summary: 'Liveness: 200 while the process serves, 503 once it shuts down', responses: { 200: { description: 'Alive' }, 503: { description: 'Shutting down' } } } },
      '/readyz': {
        get: { ...closed, summary: 'Readiness: 200 once the model is loaded and warmed, 503 before and while draining', responses: { 200: { description: 'Ready' }, 503: { description: 'Not ready' } } },
      },
      '/metrics': {
        get: { ...guarded, summary: 'Prometheus metrics (text format 0.0.4)', responses: { 200: { description: 'Metrics', content: { 'text/plain': { schema: { type: 'string' } } } }, ...common } },
      },
      '/openapi.json': { get: { ...guarded, summary: 'This document', responses: { 200: { description: 'OpenAPI 3.1', content: { 'application/json': { schema: { type: 'object' } } } }, ...common } } },
    },
    components: {
      schemas: {
        Error: {
          type: 'object',
          properties: { statusCode: { type: 'integer' }, error: { type: 'string' }, message: { type: 'string' } },
          required: ['statusCode', 'error', 'message'],
        },
      },
      ...(facts.apiKey ? { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } } : {}),
    },
  };
}
