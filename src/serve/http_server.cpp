#include "serve/http_server.h"

#include <httplib.h>

#include <chrono>
#include <cstdio>

#include "serve/openai_response.h"

namespace nh::serve {

namespace {

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(dump(error_body(e)), "application/json");
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One line on stderr per request answered.
void log_request(const ResponseInfo& info, int64_t new_tokens, const std::string& outcome) {
  std::fprintf(stderr, "%s: %lld prompt + %lld new tokens, %s\n", info.id.c_str(),
               (long long)info.prompt_tokens, (long long)new_tokens, outcome.c_str());
}

std::string outcome_of(const Output& last) {
  return last.error.empty() ? last.finish_reason : "error: " + last.error;
}

// What a streamed response keeps between calls of its content provider.
struct StreamState {
  ResponseInfo info;
  std::shared_ptr<Channel> channel;
  EventStream events;
  bool begun = false;
  std::string outcome = "client disconnected: cancelled";
};

// How long a streaming handler waits for output before checking that the client is still there.
constexpr std::chrono::milliseconds kPoll{100};

}  // namespace

HttpServer::HttpServer(Engine& engine, ApiContext context, ServerOptions options)
    : engine_(engine),
      context_(std::move(context)),
      options_(std::move(options)),
      started_(unix_now()),
      server_(std::make_unique<httplib::Server>()) {
  const size_t threads = size_t(std::max(options_.handler_threads, 1));
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server_->set_payload_max_length(size_t(64) << 20);
  install_routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  const int port = options_.port == 0 ? server_->bind_to_any_port(options_.host)
                   : server_->bind_to_port(options_.host, options_.port) ? options_.port
                                                                         : -1;
  if (port < 0)
    throw Error("serve", "--host/--port", "an address this machine can listen on",
                options_.host + ":" + std::to_string(options_.port));
  return port;
}

void HttpServer::listen() { server_->listen_after_bind(); }

void HttpServer::shutdown() {
  draining_ = true;
  engine_.drain();
  {
    std::unique_lock<std::mutex> lock(mutex_);
    answered_.wait(lock, [&] { return in_flight_ == 0; });
  }
  server_->stop();
}

void HttpServer::begin_request() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++in_flight_;
}

void HttpServer::end_request() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    --in_flight_;
  }
  answered_.notify_all();
}

void HttpServer::install_routes() {
  using httplib::Request, httplib::Response;
  server_->set_pre_routing_handler([this](const Request&, Response& res) {
    if (!draining_) return httplib::Server::HandlerResponse::Unhandled;
    send_error(res,
               {503, "the server is shutting down", "server_error", "", "service_unavailable"});
    return httplib::Server::HandlerResponse::Handled;
  });
  // Statuses httplib sets itself (404 unknown path, 400 unreadable request, 413 too large).
  server_->set_error_handler(
      httplib::Server::HandlerWithResponse([](const Request& req, Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        if (res.status == 404)
          send_error(res, {404, "unknown request URL: " + req.method + " " + req.path,
                           "invalid_request_error", "", "unknown_url"});
        else
          send_error(res, {res.status, "HTTP error " + std::to_string(res.status),
                           "invalid_request_error", "", ""});
        return httplib::Server::HandlerResponse::Handled;
      }));
  server_->set_exception_handler([](const Request&, Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, {500, what, "server_error", "", ""});
  });

  server_->Get("/health", [](const Request&, Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  server_->Get("/v1/models", [this](const Request&, Response& res) {
    res.set_content(dump(models_body(options_.model_name, started_, context_.max_context)),
                    "application/json");
  });
  for (auto [path, endpoint] : {std::pair{"/v1/completions", Endpoint::Completions},
                                std::pair{"/v1/chat/completions", Endpoint::ChatCompletions}}) {
    server_->Post(path, [this, endpoint](const Request& req, Response& res) {
      ApiRequest r;
      try {
        r = parse_request(endpoint, req.body, context_);
      } catch (const ApiError& e) {
        return send_error(res, e);
      }
      const ResponseInfo info =
          new_response(endpoint, options_.model_name, int64_t(r.engine.prompt.size()), r.logprobs);
      std::shared_ptr<Channel> channel;
      try {
        channel = engine_.submit(std::move(r.engine));
      } catch (const QueueFull& e) {
        return send_error(res, {429, e.what(), "rate_limit_error", "", "rate_limit_exceeded"});
      } catch (const ShuttingDown& e) {
        return send_error(res, {503, e.what(), "server_error", "", "service_unavailable"});
      } catch (const Error& e) {
        return send_error(res, {400, e.what(), "invalid_request_error", "", ""});
      }
      begin_request();
      if (!r.stream) {
        const Output all = channel->take_all();
        log_request(info, int64_t(all.tokens.size()), outcome_of(all));
        if (all.error.empty())
          res.set_content(dump(completion_body(info, all, context_.tokenizer)), "application/json");
        else
          send_error(res, {500, all.error, "server_error", "", ""});
        return end_request();
      }
      auto state = std::make_shared<StreamState>(
          StreamState{info, channel, EventStream(info, context_.tokenizer, r.include_usage)});
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [state](size_t, httplib::DataSink& sink) {
            if (!state->begun) {
              state->begun = true;
              const std::string first = state->events.begin();
              return first.empty() || sink.write(first.data(), first.size());
            }
            const Output next = state->channel->take(kPoll);
            const std::string out = next.empty() ? "" : state->events.feed(next);
            if (!out.empty() && !sink.write(out.data(), out.size())) return false;
            if (next.finished) {
              state->outcome = outcome_of(next);
              sink.done();
            }
            // Returning false ends the response and cancels the request. With nothing
            // written, a client that went away is noticed only by asking.
            return !out.empty() || sink.is_writable();
          },
          [this, state](bool success) {
            if (!success) state->channel->cancel();
            log_request(state->info, state->events.tokens_sent(), state->outcome);
            end_request();
          });
    });
  }
}

}  // namespace nh::serve
