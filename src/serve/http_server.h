// The HTTP front of `nemotronh serve` (cpp-httplib): GET /health, GET /v1/models,
// POST /v1/completions and POST /v1/chat/completions, streamed as server-sent events when asked.
// Handler threads parse a request, queue it on the engine and wait on its channel; a streaming
// client that goes away cancels its request. Errors are OpenAI-shaped JSON: 400 bad requests,
// 404 unknown paths, 429 a full queue, 503 while shutting down, 500 an engine failure.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "serve/engine.h"
#include "serve/openai_request.h"

namespace httplib {
class Server;
}

namespace nh::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port
  std::string model_name;
  int handler_threads = 16;  // each waiting request holds one
};

class HttpServer {
 public:
  HttpServer(Engine& engine, ApiContext context, ServerOptions options);
  ~HttpServer();

  // Binds the listening socket and returns its port; throws nh::Error when it cannot.
  int bind();
  // Serves until shutdown() (run it on a thread of its own).
  void listen();
  // Answers new requests with 503, lets the engine finish every accepted request, waits until
  // each has been answered, then stops listen().
  void shutdown();

 private:
  void install_routes();
  // Counts requests accepted by the engine and not yet answered.
  void begin_request();
  void end_request();

  Engine& engine_;
  const ApiContext context_;
  const ServerOptions options_;
  const int64_t started_;  // Unix seconds, the model's "created"
  std::unique_ptr<httplib::Server> server_;
  std::atomic<bool> draining_{false};
  std::mutex mutex_;
  std::condition_variable answered_;
  int64_t in_flight_ = 0;
};

}  // namespace nh::serve
