// nemotronh serve: an OpenAI-compatible HTTP server (src/serve/). One engine thread batches
// every request continuously; SIGINT or SIGTERM stops it gracefully: new requests get 503,
// accepted ones finish (each is bounded by its max_tokens), then the program exits with 0.
// A second SIGINT (or SIGTERM) during that ends the program at once.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "cli/commands.h"
#include "cli/inference_options.h"
#include "serve/http_server.h"

namespace nh::cli {

namespace {

struct Options {
  std::string model, adapter, host = "127.0.0.1", device = "auto", dtype, model_name,
                     chat_template = "chatml";
  int port = 8080;
  int64_t max_batch = 8, max_context = 4096, max_tokens_limit = 2048, max_queue = 64,
          kv_cache_tokens = 0;
};

volatile sig_atomic_t g_stop_signal = 0;

// Any thread may take the signal (some libraries start threads before main), so the handler
// only sets a flag that the main thread polls.
void on_serve_signal(int sig) { g_stop_signal = sig; }

void run(const Options& o) {
  struct sigaction action = {};
  action.sa_handler = on_serve_signal;
  action.sa_flags = SA_RESTART | SA_RESETHAND;  // the second signal takes the default action
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  serve::ApiContext context;
  context.chat_template = chat_template_by_name(o.chat_template);
  LoadedModel loaded = load_for_inference(o.model, o.adapter, o.device, o.dtype);
  if (!loaded.tokenizer)
    throw Error(o.model, "tokenizer.json", "a tokenizer (serve answers with text)", "none");
  context.tokenizer = loaded.tokenizer.get();
  context.eos_ids = loaded.eos_ids;
  context.vocab_size = loaded.model.config().vocab_size;
  context.max_context = o.max_context;
  context.max_tokens_limit = o.max_tokens_limit;
  serve::ServerOptions server_options;
  server_options.host = o.host;
  server_options.port = o.port;
  server_options.model_name = o.model_name.empty()
                                  ? std::filesystem::weakly_canonical(o.model).filename().string()
                                  : o.model_name;
  // Each request waiting for the engine holds a handler thread; a few more answer the rest.
  server_options.handler_threads = int(o.max_batch + o.max_queue + 8);

  serve::Engine engine(loaded.model, loaded.tokenizer.get(),
                       {o.max_batch, o.max_context, o.max_queue, o.kv_cache_tokens});
  serve::HttpServer server(engine, context, server_options);
  const int port = server.bind();
  std::atomic<bool> listening = true;
  std::thread listener([&] {
    server.listen();
    listening = false;
  });
  std::printf("listening on http://%s:%d (model %s)\n", o.host.c_str(), port,
              server_options.model_name.c_str());
  std::fflush(stdout);

  while (listening && !g_stop_signal) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (!listening) {
    listener.join();
    throw Error("serve", "listening", "to serve until stopped", "the listener ended");
  }
  std::fprintf(stderr, "shutting down: finishing %lld running and %lld queued requests\n",
               (long long)engine.active(), (long long)engine.queued());
  server.shutdown();
  listener.join();
}

}  // namespace

void add_serve(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("serve", "An OpenAI-compatible HTTP server (completions, chat)");
  cmd->add_option("--model", o->model, "HF model directory (with tokenizer.json)")->required();
  cmd->add_option("--host", o->host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", o->port, "port to listen on (0: any free port)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--adapter", o->adapter, "PEFT LoRA adapter directory to apply (not merged)");
  cmd->add_option("--device", o->device, "cpu, cuda or auto")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "fp32, or bf16 on cuda (the default there)");
  cmd->add_option("--max-batch", o->max_batch, "sequences decoded together")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--max-context", o->max_context, "prompt + new tokens per request at most")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(2), int64_t(1) << 30));
  cmd->add_option("--max-tokens-limit", o->max_tokens_limit, "max_tokens a request may ask for")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(1) << 30));
  cmd->add_option("--kv-cache-tokens", o->kv_cache_tokens,
                  "KV cache positions shared by all requests (0: max-batch × max-context); a "
                  "request reserves prompt + max_tokens of them while it runs")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  cmd->add_option("--max-queue", o->max_queue, "requests waiting for a row (more: 429)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--model-name", o->model_name,
                  "the model's id in the API (default: the directory's name)");
  cmd->add_option("--chat-template", o->chat_template, "chatml or plain")->capture_default_str();
  cmd->callback([o] { run(*o); });
}

}  // namespace nh::cli
