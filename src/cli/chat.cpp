// nemotronh chat: an interactive terminal chat. Each line read is a user message; the reply
// streams as it is generated. /reset forgets the conversation, /exit (or end of input) ends.
// Works piped: prompts are shown only when the input is a terminal.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "cli/inference_options.h"
#include "infer/generate.h"
#include "io/chat_format.h"

namespace nh::cli {

namespace {

struct Options {
  std::string model, adapter, device = "auto", dtype, system, chat_template = "chatml";
  int64_t max_new_tokens = 512;
  SamplingParams sampling;
};

struct Message {
  std::string role, content;
};

const RoleFormat& format_of(const ChatTemplate& t, const std::string& role) {
  auto it = t.roles.find(role);
  return it == t.roles.end() ? t.default_format : it->second;
}

std::string prefix_of(const ChatTemplate& t, const std::string& role) {
  std::string p = format_of(t, role).prefix;
  for (size_t at; (at = p.find("{role}")) != std::string::npos;) p.replace(at, 6, role);
  return p;
}

// The conversation as the template writes it, ending with the assistant's turn opened.
std::string render(const ChatTemplate& t, const std::vector<Message>& history) {
  std::string text = t.bos;
  for (const auto& m : history) {
    const RoleFormat& f = format_of(t, m.role);
    text += prefix_of(t, m.role) + m.content + f.suffix + f.separator;
  }
  return text + prefix_of(t, "assistant");
}

void run(const Options& o) {
  o.sampling.validate("chat");
  LoadedModel loaded = load_for_inference(o.model, o.adapter, o.device, o.dtype);
  if (!loaded.tokenizer)
    throw Error(o.model, "tokenizer.json", "a tokenizer (chat needs text)", "none");
  const ChatTemplate tmpl = chat_template_by_name(o.chat_template);
  const std::string end_of_turn = format_of(tmpl, "assistant").suffix;
  const bool interactive = isatty(STDIN_FILENO);

  std::vector<Message> history;
  if (!o.system.empty()) history.push_back({"system", o.system});
  const size_t fixed = history.size();
  for (std::string line;;) {
    if (interactive) std::fputs("> ", stdout), std::fflush(stdout);
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line == "/reset") {
      history.resize(fixed);
      std::puts("(conversation reset)");
      continue;
    }
    if (line.empty()) continue;
    history.push_back({"user", line});
    GenerationRequest q;
    q.prompt = loaded.tokenizer->encode(render(tmpl, history), false);
    q.sampling = o.sampling;
    q.max_new_tokens = o.max_new_tokens;
    q.stop_ids = loaded.eos_ids;
    if (!end_of_turn.empty()) q.stop_strings = {end_of_turn};
    const auto res = generate(loaded.model, loaded.tokenizer.get(), {q},
                              [](size_t, const std::string& piece) {
                                std::fwrite(piece.data(), 1, piece.size(), stdout);
                                std::fflush(stdout);
                              });
    std::fputs("\n", stdout);
    std::fflush(stdout);
    history.push_back({"assistant", res[0].text});
  }
}

}  // namespace

void add_chat(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("chat", "Interactive chat in the terminal (/reset, /exit)");
  cmd->add_option("--model", o->model, "HF model directory (with tokenizer.json)")->required();
  cmd->add_option("--system", o->system, "a system message opening the conversation");
  cmd->add_option("--chat-template", o->chat_template, "chatml or plain")->capture_default_str();
  cmd->add_option("--adapter", o->adapter, "PEFT LoRA adapter directory to apply (not merged)");
  cmd->add_option("--device", o->device, "cpu, cuda or auto")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "fp32, or bf16 on cuda (the default there)");
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "reply length at most")
      ->capture_default_str();
  add_sampling_options(cmd, o->sampling);
  cmd->callback([o] { run(*o); });
}

}  // namespace nh::cli
