// libFuzzer target: see check_json_decode in properties_ipc.hpp for what is checked.
// Built by -DSUBPROCESS_BUILD_FUZZERS=ON (clang); run by .ci/fuzz.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "properties_ipc.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::check_json_decode(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
