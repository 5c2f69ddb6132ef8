// Each subcommand lives in its own file and registers itself here.
#pragma once

#include <CLI/CLI.hpp>

namespace nh::cli {

void register_commands(CLI::App& app);
// The exit code the subcommand that ran asked for (0 unless set).
int exit_code();
void set_exit_code(int code);

void add_verify(CLI::App& app);
void add_info(CLI::App& app);
void add_init(CLI::App& app);
void add_train(CLI::App& app);
void add_eval(CLI::App& app);
void add_preprocess(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_generate(CLI::App& app);
void add_chat(CLI::App& app);
void add_serve(CLI::App& app);
void add_merge(CLI::App& app);

}  // namespace nh::cli
