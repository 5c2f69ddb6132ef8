# Writes OUT, a C++ source defining nh::preset_configs(): every configs/models/*.json
# compiled into the program, so `--preset NAME` works wherever the binary is copied.
file(GLOB files ${SRC_DIR}/*.json)
list(SORT files)
set(body "")
foreach(f ${files})
  get_filename_component(name ${f} NAME_WLE)
  file(READ ${f} text)
  string(APPEND body "      {\"${name}\", R\"nhjson(${text})nhjson\"},\n")
endforeach()
file(WRITE ${OUT}.tmp "// Generated from configs/models/*.json by cmake/embed_presets.cmake.\n#include \"model/presets.h\"\n\nnamespace nh {\n\nconst std::vector<std::pair<std::string, std::string>>& preset_configs() {\n  static const std::vector<std::pair<std::string, std::string>> presets = {\n${body}  };\n  return presets;\n}\n\n}  // namespace nh\n")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different ${OUT}.tmp ${OUT})
