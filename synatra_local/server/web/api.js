// The two endpoints the page uses: GET /v1/models and POST /v1/chat/completions (streamed as server-sent events).
// With `serve --api-key` both need `Authorization: Bearer KEY`; the key lives in this browser's localStorage.

const KEY_ITEM = "synatra.apiKey";

export class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

export const apiKey = {
  get: () => localStorage.getItem(KEY_ITEM) || "",
  set: (key) => (key ? localStorage.setItem(KEY_ITEM, key) : localStorage.removeItem(KEY_ITEM)),
};

function headers() {
  const result = { "Content-Type": "application/json" };
  const key = apiKey.get();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    message = (await response.json()).error.message || message;
  } catch {
    // not an OpenAI error object: keep the status line
  }
  return new ApiError(message, response.status);
}

export async function listModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) throw await failure(response);
  return (await response.json()).data.map((model) => model.id);
}

/**
 * Stream one chat completion. `onText(piece)` gets each piece of text as it arrives; the promise resolves with
 * `{finishReason, usage}` at the end. Aborting `signal` closes the connection, which cancels the generation on
 * the server.
 */
export async function streamChat({ model, messages, temperature, maxTokens, signal, onText }) {
  const body = {
    model,
    messages,
    temperature,
    max_tokens: maxTokens,
    stream: true,
    stream_options: { include_usage: true },
  };
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const result = { finishReason: null, usage: null };
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return result;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(chunk.error.message || "the server reported an error");
        if (chunk.usage) result.usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) onText(choice.delta.content);
        if (choice.finish_reason) result.finishReason = choice.finish_reason;
      }
    }
  }
  return result;
}
