// A CloudFront viewer-request function (cloudfront-js-2.0): answers with
// the gateway's own 404 body, at the edge, so the request never reaches
// the origin. Used for /metrics, which is never served to the internet.
function handler(event) {
  return {
    statusCode: 404,
    statusDescription: "Not Found",
    headers: {
      "content-type": { value: "application/json" },
      "cache-control": { value: "no-store" },
    },
    body: {
      encoding: "text",
      data: '{"error":{"code":"not_found","message":"no such route"}}',
    },
  };
}
