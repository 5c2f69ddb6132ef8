#include "train/tensorboard.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "support/temp_dir.h"

namespace nh {
namespace {

namespace fs = std::filesystem;

uint32_t crc_of(const std::string& s) { return crc32c(s.data(), s.size()); }

uint64_t read_le(const std::string& bytes, size_t at, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t(uint8_t(bytes[at + size_t(i)])) << (8 * i);
  return v;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The payloads of a TFRecord file, each record's length and checksums verified.
std::vector<std::string> read_records(const std::string& bytes) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < bytes.size()) {
    EXPECT_LE(at + 16, bytes.size());
    const uint64_t n = read_le(bytes, at, 8);
    EXPECT_EQ(read_le(bytes, at + 8, 4), masked_crc32c(bytes.data() + at, 8));
    EXPECT_LE(at + 16 + n, bytes.size());
    out.push_back(bytes.substr(at + 12, n));
    EXPECT_EQ(read_le(bytes, at + 12 + n, 4), masked_crc32c(bytes.data() + at + 12, n));
    at += 16 + n;
  }
  return out;
}

// Published CRC-32C check values (RFC 3720 B.4 and the "123456789" check of the catalogue).
TEST(Crc32c, MatchesPublishedVectors) {
  EXPECT_EQ(crc_of("123456789"), 0xe3069283u);
  EXPECT_EQ(crc_of(""), 0u);
  EXPECT_EQ(crc_of(std::string(32, '\0')), 0x8a9136aau);
  EXPECT_EQ(crc_of(std::string(32, '\xff')), 0x62a8ab43u);
  std::string ascending, descending;
  for (int i = 0; i < 32; ++i) ascending.push_back(char(i)), descending.push_back(char(31 - i));
  EXPECT_EQ(crc_of(ascending), 0x46dd794eu);
  EXPECT_EQ(crc_of(descending), 0x113fdb5cu);
}

TEST(Crc32c, MaskRotatesRightBy15AndAddsTheConstant) {
  const std::string s = "123456789";
  // (0xe3069283 >> 15) | (0xe3069283 << 17) = 0x2507c60d (mod 2^32), + 0xa282ead8;
  // TensorBoard's masked_crc32c(b"123456789") gives the same.
  EXPECT_EQ(masked_crc32c(s.data(), s.size()), 0xc78ab0e5u);
}

TEST(TfRecord, FramesLengthDataAndBothChecksums) {
  const std::string data = "hello, events";
  const std::string r = tfrecord(data);
  ASSERT_EQ(r.size(), data.size() + 16);
  EXPECT_EQ(read_le(r, 0, 8), data.size());
  EXPECT_EQ(read_le(r, 8, 4), masked_crc32c(r.data(), 8));
  EXPECT_EQ(r.substr(12, data.size()), data);
  EXPECT_EQ(read_le(r, 12 + data.size(), 4), masked_crc32c(data.data(), data.size()));
}

// Bytes worked out by hand from the protobuf wire format.
TEST(EventEncoding, ScalarEventHasTheWireBytesOfProtobuf) {
  const std::string got = encode_scalar_event(1.5, 300, "a", 2.0f);
  const std::string want(
      "\x09\x00\x00\x00\x00\x00\x00\xf8\x3f"  // wall_time: field 1, fixed64, 1.5
      "\x10\xac\x02"                          // step: field 2, varint 300
      "\x2a\x0a"                              // summary: field 5, 10 bytes
      "\x0a\x08"                              //   value: field 1, 8 bytes
      "\x0a\x01\x61"                          //     tag "a"
      "\x15\x00\x00\x00\x40",                 //     simple_value: field 2, fixed32, 2.0f
      24);
  EXPECT_EQ(got, want);
}

TEST(EventEncoding, DefaultsAreLeftOutAndZeroValuesKept) {
  // step 0 and wall_time 0 are proto3 defaults; simple_value is in a oneof, so 0 is written.
  EXPECT_EQ(encode_scalar_event(0, 0, "t", 0.0f),
            std::string("\x2a\x0a\x0a\x08\x0a\x01t\x15\x00\x00\x00\x00", 12));
  EXPECT_EQ(encode_file_version_event(0), std::string("\x1a\x0d") + "brain.Event:2");
  // A negative int64 takes ten varint bytes.
  EXPECT_EQ(encode_scalar_event(0, -1, "t", 0.0f).substr(0, 11),
            std::string("\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11));
}

TEST(EventEncoding, SessionStartIsASessionLogWithStatusStart) {
  EXPECT_EQ(encode_session_start_event(0, 6), std::string("\x10\x06\x3a\x02\x08\x01", 6));
}

TEST(TensorBoardWriter, FileStartsWithTheVersionEventAndKeepsEveryScalar) {
  test::TempDir dir;
  std::string path;
  {
    TensorBoardWriter w(dir / "run");
    path = w.path();
    for (int64_t step = 1; step <= 5; ++step) w.add_scalar("train/loss", 1.0 / double(step), step);
    // Nothing but the writes themselves: the file is complete before the writer is closed.
    EXPECT_EQ(read_records(read_file(path)).size(), 6u);
  }
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  const std::string name = fs::path(path).filename().string();
  EXPECT_TRUE(name.starts_with("events.out.tfevents.")) << name;
  EXPECT_TRUE(name.ends_with(std::string(".") + host)) << name;
  const std::vector<std::string> records = read_records(read_file(path));
  ASSERT_EQ(records.size(), 6u);
  EXPECT_NE(records[0].find("brain.Event:2"), std::string::npos);
  EXPECT_NE(records[5].find("train/loss"), std::string::npos);
}

TEST(TensorBoardWriter, WritersStartedTogetherGetSeparateFiles) {
  test::TempDir dir;
  TensorBoardWriter a(dir.path()), b(dir.path());
  EXPECT_NE(a.path(), b.path());
  a.add_scalar("x", 1, 1);
  b.add_scalar("x", 2, 1);
  a.flush();
  EXPECT_EQ(read_records(read_file(a.path())).size(), 2u);
  EXPECT_EQ(read_records(read_file(b.path())).size(), 2u);
}

TEST(TensorBoardWriter, EmptyTagAndUnwritableDirectoryAreErrors) {
  test::TempDir dir;
  TensorBoardWriter w(dir.path());
  EXPECT_THROW(w.add_scalar("", 1, 1), Error);
  std::ofstream(dir / "file") << "x";
  try {
    TensorBoardWriter bad(dir / "file/run");
    FAIL() << "a directory under a file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("file/run"), std::string::npos) << e.what();
  }
}

// TensorBoard's own reader (EventAccumulator) sees the tags, steps and values, and drops a dead
// run's events past a restart marker; its record writer frames the payloads into the same bytes,
// and protobuf re-serializes each payload to itself. Skipped where python3 with tensorboard is
// missing.
TEST(TensorBoardWriter, TensorBoardReadsTagsStepsAndValuesBack) {
  if (std::system("python3 -c 'import tensorboard' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 with tensorboard is not available";
  test::TempDir dir;
  Rng rng(17);
  std::map<std::string, std::vector<std::pair<int64_t, float>>> written;
  {
    TensorBoardWriter w(dir / "run");
    for (int64_t step = 1; step <= 40; ++step) {
      for (const char* tag : {"train/loss", "train/lr", "val/ppl"}) {
        if (std::string(tag) == "val/ppl" && step % 10 != 0) continue;
        const double v = rng.normal() * 100;
        w.add_scalar(tag, v, step * 1000);  // steps past one varint byte
        written[tag].push_back({step * 1000, float(v)});
      }
    }
  }
  // A run that died after step 10 with its last checkpoint at step 5, resumed.
  {
    TensorBoardWriter dead(dir / "resumed");
    for (int64_t step = 1; step <= 10; ++step) dead.add_scalar("train/loss", double(step), step);
  }
  {
    TensorBoardWriter resumed(dir / "resumed");
    resumed.add_session_start(6);
    for (int64_t step = 6; step <= 8; ++step) resumed.add_scalar("train/loss", 100.0 + step, step);
  }
  const std::string script =
      "import glob, io, json, struct, sys\n"
      "from tensorboard.backend.event_processing import event_accumulator as ea\n"
      "from tensorboard.compat.proto import event_pb2\n"
      "from tensorboard.summary.writer.record_writer import RecordWriter\n"
      "files = glob.glob(sys.argv[1] + '/events.*') + glob.glob(sys.argv[2] + '/events.*')\n"
      "same_framing, same_proto = True, True\n"
      "for f in files:\n"
      "    raw = open(f, 'rb').read()\n"
      "    again = io.BytesIO()\n"
      "    rw = RecordWriter(again)\n"
      "    pos = 0\n"
      "    while pos < len(raw):\n"
      "        (n,) = struct.unpack_from('<Q', raw, pos)\n"
      "        data = raw[pos + 12:pos + 12 + n]\n"
      "        rw.write(data)\n"
      "        same_proto &= event_pb2.Event.FromString(data).SerializeToString() == data\n"
      "        pos += 16 + n\n"
      "    same_framing &= again.getvalue() == raw\n"
      "acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0})\n"
      "acc.Reload()\n"
      "scalars = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()['scalars']}\n"
      "resumed = ea.EventAccumulator(sys.argv[2])\n"
      "resumed.Reload()\n"
      "resumed = [[e.step, e.value] for e in resumed.Scalars('train/loss')]\n"
      "print(json.dumps({'version': acc.file_version, 'scalars': scalars, 'resumed': resumed,\n"
      "                  'files': len(files),\n"
      "                  'same_framing': again.getvalue() == raw, 'same_proto': same_proto}))\n";
  const std::string script_path = dir / "read.py";
  std::ofstream(script_path) << script;
  FILE* pipe = popen(
      ("python3 " + script_path + " " + (dir / "run") + " " + (dir / "resumed") + " 2>&1").c_str(),
      "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  ASSERT_EQ(pclose(pipe), 0) << output;
  const nlohmann::json got = nlohmann::json::parse(output.substr(output.rfind("{\"version")));
  EXPECT_EQ(got["version"].get<double>(), 2.0);
  EXPECT_EQ(got["files"], 3);
  EXPECT_TRUE(got["same_framing"].get<bool>());
  EXPECT_TRUE(got["same_proto"].get<bool>());
  EXPECT_EQ(got["resumed"], nlohmann::json::parse("[[1, 1.0], [2, 2.0], [3, 3.0], [4, 4.0], "
                                                  "[5, 5.0], [6, 106.0], [7, 107.0], [8, 108.0]]"));
  ASSERT_EQ(got["scalars"].size(), written.size());
  for (const auto& [tag, points] : written) {
    const auto& read = got["scalars"][tag];
    ASSERT_EQ(read.size(), points.size()) << tag;
    for (size_t i = 0; i < points.size(); ++i) {
      EXPECT_EQ(read[i][0].get<int64_t>(), points[i].first) << tag;
      EXPECT_EQ(read[i][1].get<float>(), points[i].second) << tag;
    }
  }
}

}  // namespace
}  // namespace nh
