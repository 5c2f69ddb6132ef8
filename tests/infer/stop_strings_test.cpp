#include "infer/stop_strings.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "core/rng.h"

namespace nh {
namespace {

// Pushes the pieces in turn; returns everything released, with flush() at the end.
std::string stream(StopStrings& stop, const std::vector<std::string>& pieces) {
  std::string out;
  for (const std::string& p : pieces) out += stop.push(p);
  return out + stop.flush();
}

// True when s is a run of whole UTF-8 characters (no cut sequence at either end).
bool whole_chars(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    const size_t n = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 0;
    if (n == 0 || i + n > s.size()) return false;
    i += n;
  }
  return true;
}

TEST(StopStrings, WithoutStopStringsEverythingIsReleasedAtOnce) {
  StopStrings stop({});
  EXPECT_EQ(stop.push("Hello"), "Hello");
  EXPECT_EQ(stop.push(", world"), ", world");
  EXPECT_EQ(stop.flush(), "");
  EXPECT_FALSE(stop.stopped());
}

TEST(StopStrings, StopSplitAcrossPushesIsHeldThenCut) {
  StopStrings stop({"###"});
  EXPECT_EQ(stop.push("Hello #"), "Hello ");
  EXPECT_FALSE(stop.stopped());
  EXPECT_EQ(stop.push("#"), "");
  EXPECT_EQ(stop.push("# world"), "");
  EXPECT_TRUE(stop.stopped());
  EXPECT_EQ(stop.push("more text"), "");
  EXPECT_EQ(stop.flush(), "");
}

TEST(StopStrings, FalseStartIsReleasedOnceItCannotMatch) {
  StopStrings stop({"</s>"});
  EXPECT_EQ(stop.push("a <"), "a ");
  EXPECT_EQ(stop.push("/"), "");
  EXPECT_EQ(stop.push("b"), "</b");
  EXPECT_EQ(stop.push("x</"), "x");
  EXPECT_EQ(stop.flush(), "</");  // no stop string came: the held text ends the output
  EXPECT_FALSE(stop.stopped());
}

TEST(StopStrings, TextBeforeTheStopInTheSamePushIsReturned) {
  StopStrings stop({"\n\n"});
  EXPECT_EQ(stop.push("line one\n\nline two"), "line one");
  EXPECT_TRUE(stop.stopped());
}

TEST(StopStrings, StopAtTheVeryStart) {
  StopStrings stop({"END"});
  EXPECT_EQ(stop.push(""), "");
  EXPECT_EQ(stop.push("END of it"), "");
  EXPECT_TRUE(stop.stopped());
  EXPECT_EQ(stop.flush(), "");
}

TEST(StopStrings, OverlappingCandidatesAbcAndBcd) {
  {
    StopStrings stop({"abc", "bcd"});
    EXPECT_EQ(stop.push("a"), "");
    EXPECT_EQ(stop.push("b"), "");
    EXPECT_EQ(stop.push("c"), "");  // "abc" is complete
    EXPECT_TRUE(stop.stopped());
  }
  {
    StopStrings stop({"abc", "bcd"});
    EXPECT_EQ(stop.push("xb"), "x");
    EXPECT_EQ(stop.push("c"), "");
    EXPECT_EQ(stop.push("d!"), "");
    EXPECT_TRUE(stop.stopped());
  }
  {
    StopStrings stop({"abc", "bcd"});
    EXPECT_EQ(stop.push("ab"), "");
    EXPECT_EQ(stop.push("d"), "abd");  // neither can start in "abd" any more
    EXPECT_FALSE(stop.stopped());
  }
  {
    // Both occur in one push: the one that starts first ends the text.
    StopStrings stop({"bcd", "abc"});
    EXPECT_EQ(stop.push("zabcd"), "z");
  }
}

TEST(StopStrings, ALongerCandidateThatFailsLeavesTheShorterMatchInside) {
  // "abc" is held as the start of "abcx"; "d" breaks it but completes "bcd" from offset 1.
  StopStrings stop({"abcx", "bcd"});
  EXPECT_EQ(stop.push("abc"), "");
  EXPECT_EQ(stop.push("d"), "a");
  EXPECT_TRUE(stop.stopped());
}

TEST(StopStrings, EarliestOfSeveralStopStringsWins) {
  StopStrings stop({"END", "STOP", "\n"});
  EXPECT_EQ(stream(stop, {"xx ST", "OP yy", " END\n"}), "xx ");
  EXPECT_TRUE(stop.stopped());
}

TEST(StopStrings, Utf8AroundAStop) {
  const std::string text = "héllo→wörld";  // é, ö: 2 bytes; →: 3 bytes
  {
    // One byte at a time: the stop's bytes are held and cut, the rest comes out intact.
    StopStrings stop({"→"});
    std::vector<std::string> bytes;
    for (char c : text) bytes.emplace_back(1, c);
    EXPECT_EQ(stream(stop, bytes), "héllo");
    EXPECT_TRUE(stop.stopped());
  }
  {
    // Whole characters in: every piece out is whole characters too.
    StopStrings stop({"wö", "→x"});
    const std::vector<std::string> chars = {"h", "é", "l", "l", "o", "→", "w", "ö", "r"};
    std::string out;
    for (const std::string& c : chars) {
      const std::string piece = stop.push(c);
      EXPECT_TRUE(whole_chars(piece)) << "piece of " << piece.size() << " bytes";
      out += piece;
    }
    EXPECT_EQ(out, "héllo→");
    EXPECT_TRUE(stop.stopped());
  }
  {
    // "ó" and "ö" share their first byte: it is held, then released with the second.
    StopStrings stop({"ö"});
    EXPECT_EQ(stop.push("\xC3"), "");
    EXPECT_EQ(stop.push("\xB3 "), "ó ");
    EXPECT_EQ(stop.push("\xC3"), "");
    EXPECT_EQ(stop.push("\xB6!"), "");
    EXPECT_TRUE(stop.stopped());
  }
}

// Random texts cut at random places give what cutting the whole text at once gives, and no
// more than (longest stop - 1) bytes are ever held back.
TEST(StopStrings, RandomSplitsMatchTheOneShotCut) {
  const std::vector<std::string> stops = {"abc", "bcd", "cc", "dab"};
  Rng rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    const int n = 1 + int(rng.next() % 12);
    for (int i = 0; i < n; ++i) text += char('a' + rng.next() % 4);
    size_t cut = std::string::npos;
    for (const std::string& s : stops) cut = std::min(cut, text.find(s));

    StopStrings stop(stops);
    std::string out;
    size_t consumed = 0;
    while (consumed < text.size()) {
      const size_t len = std::min(text.size() - consumed, size_t(rng.next() % 4));
      out += stop.push(text.substr(consumed, len));
      consumed += len;
      if (!stop.stopped()) {
        EXPECT_LE(consumed - out.size(), 2u) << text;
      }
    }
    out += stop.flush();
    EXPECT_EQ(out, text.substr(0, cut)) << text;
    EXPECT_EQ(stop.stopped(), cut != std::string::npos) << text;
  }
}

TEST(StopStrings, EmptyStopStringIsAnError) {
  try {
    StopStrings stop({"ok", ""}, "request");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "request: stop[1]: expected a non-empty string, found an empty string");
  }
}

}  // namespace
}  // namespace nh
