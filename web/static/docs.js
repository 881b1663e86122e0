// Renders /openapi.json with the Swagger UI 5 bundle served from this server (no CDN).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    displayRequestDuration: true,
  });
});
