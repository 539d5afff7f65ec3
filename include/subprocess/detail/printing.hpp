// subprocess/detail/printing.hpp - the one helper behind every operator<<.
//
// The library's operator<< overloads are templates on the stream's traits, so a
// header needs only <iosfwd> and <string_view>: the stream is a complete type only
// where the user writes `os << x`, and that is where the body is instantiated.
// The text goes through operator<<(ostream, string_view), so width() and the
// fill/adjustment flags apply to the whole value, as for a string.
#pragma once

#include <iosfwd>
#include <string>
#include <string_view>

namespace subprocess::detail {

template <class Traits>
std::basic_ostream<char, Traits>& put_text(std::basic_ostream<char, Traits>& os, const std::string& text) {
  return os << std::basic_string_view<char, Traits>(text.data(), text.size());
}

}  // namespace subprocess::detail
