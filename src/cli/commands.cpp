#include "cli/commands.h"

namespace nh::cli {

namespace {
int g_exit_code = 0;
}

int exit_code() { return g_exit_code; }
void set_exit_code(int code) { g_exit_code = code; }

void register_commands(CLI::App& app) {
  add_verify(app);
  add_info(app);
  add_init(app);
  add_train(app);
  add_eval(app);
  add_preprocess(app);
  add_tokenize(app);
  add_generate(app);
  add_chat(app);
  add_serve(app);
  add_merge(app);
}

}  // namespace nh::cli
