#include "lifl/dataplane/safetensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

namespace lifl::dataplane {
namespace {

std::string file(const std::string& header, size_t dataBytes, uint64_t forcedLen = 0) {
  std::string h = header;
  h.append((8 - h.size() % 8) % 8, ' ');
  uint64_t len = forcedLen ? forcedLen : h.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &len, 8);
  out += h;
  out.append(dataBytes, '\0');
  return out;
}

Result<SafetensorsView> parse(const std::string& s) {
  return parseSafetensors(reinterpret_cast<const std::byte*>(s.data()), s.size());
}

JobSpec specWith(std::vector<std::pair<std::string, std::vector<int64_t>>> tensors) {
  JobSpec spec;
  spec.id = "t";
  for (auto& [n, shape] : tensors) {
    uint64_t e = 1;
    for (auto d : shape) e *= static_cast<uint64_t>(d);
    spec.tensors.push_back({n, shape, e});
  }
  return spec;
}

TEST(Safetensors, ParsesValidFiles) {
  auto s = file(
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("a":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}})",
      16);
  auto v = parse(s);
  ASSERT_TRUE(v) << v.error().toString();
  ASSERT_EQ(v.value().tensors.size(), 2u);
  EXPECT_EQ(v.value().tensors[0].name, "a");  // sorted by name
  EXPECT_EQ(v.value().tensors[0].dtype, DType::BF16);
  EXPECT_EQ(v.value().tensors[0].elements, 4u);
  EXPECT_EQ(v.value().tensors[1].begin, v.value().dataStart);
  EXPECT_TRUE(checkMatchesModel(v.value(), specWith({{"a", {2, 2}}, {"b", {2}}})));

  auto scalar = parse(file(R"({"s":{"dtype":"F16","shape":[],"data_offsets":[0,2]}})", 2));
  ASSERT_TRUE(scalar) << scalar.error().toString();
  EXPECT_EQ(scalar.value().tensors[0].elements, 1u);

  auto empty = parse(file(R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}})", 0));
  ASSERT_TRUE(empty) << empty.error().toString();
}

struct Malformed {
  const char* name;
  std::string body;
};

TEST(Safetensors, RejectsMalformedFilesWith400) {
  const std::string ok = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const Malformed cases[] = {
      {"shorter than 8 bytes", std::string(5, '\0')},
      {"zero header length", file("", 0, 0).substr(0, 8).replace(0, 8, std::string(8, '\0'))},
      {"header length past end", file(ok, 8, 1000)},
      {"header length huge", file(ok, 8, 1ull << 40)},
      {"header not JSON", file("{\"w\":", 8)},
      {"header not an object", file("[1,2,3]", 8)},
      {"tensor not an object", file(R"({"w":3})", 8)},
      {"missing dtype", file(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8)},
      {"unknown dtype", file(R"({"w":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}})", 8)},
      {"shape not an array", file(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8)},
      {"negative dimension", file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8)},
      {"offsets wrong arity", file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8)},
      {"begin after end", file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8)},
      {"end past the body", file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", 8)},
      {"size does not match shape",
       file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)},
      {"overlapping tensors", file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                   12)},
      {"gap between tensors", file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                   R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                   12)},
      {"trailing bytes", file(ok, 12)},
      {"truncated data", file(ok, 4)},
      {"shape overflows",
       file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8)},
      {"metadata value not a string",
       file(R"({"__metadata__":{"k":1},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8)},
      {"misaligned tensor", file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}})",
                                 5)},
  };
  static_assert(std::size(cases) >= 15);
  for (const auto& c : cases) {
    auto v = parse(c.body);
    ASSERT_FALSE(v) << c.name << " was accepted";
    EXPECT_EQ(v.error().status, 400) << c.name;
    EXPECT_EQ(v.error().code, "malformed_safetensors") << c.name;
    EXPECT_FALSE(v.error().detail.empty()) << c.name;
  }
}

TEST(Safetensors, ModelMismatchIs422) {
  auto v = parse(file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8));
  ASSERT_TRUE(v);
  auto wrongName = checkMatchesModel(v.value(), specWith({{"x", {2}}}));
  ASSERT_FALSE(wrongName);
  EXPECT_EQ(wrongName.error().status, 422);
  auto wrongShape = checkMatchesModel(v.value(), specWith({{"w", {1, 2}}}));
  ASSERT_FALSE(wrongShape);
  EXPECT_EQ(wrongShape.error().code, "tensor_mismatch");
  auto extra = checkMatchesModel(v.value(), specWith({{"w", {2}}, {"z", {1}}}));
  ASSERT_FALSE(extra);
  auto i8 = parse(file(R"({"w":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}})", 2));
  ASSERT_TRUE(i8);
  auto dtype = checkMatchesModel(i8.value(), specWith({{"w", {2}}}));
  ASSERT_FALSE(dtype);
  EXPECT_EQ(dtype.error().code, "unsupported_dtype");
}

TEST(Safetensors, NonFiniteValuesAre422) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    auto s = file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})", 12);
    auto v = parse(s);
    ASSERT_TRUE(v);
    EXPECT_TRUE(checkFinite(reinterpret_cast<const std::byte*>(s.data()), v.value()));
    std::memcpy(s.data() + v.value().tensors[0].begin + 4, &bad, 4);
    auto r = checkFinite(reinterpret_cast<const std::byte*>(s.data()), v.value());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().status, 422);
    EXPECT_EQ(r.error().code, "non_finite");
  }
}

TEST(Safetensors, ModelHeaderRoundTrips) {
  auto spec = specWith({{"a", {3}}, {"b", {2, 2}}});
  std::string body = modelHeader(spec);
  body.append(7 * 4, '\0');
  auto v = parse(body);
  ASSERT_TRUE(v) << v.error().toString();
  EXPECT_TRUE(checkMatchesModel(v.value(), spec));
  EXPECT_EQ(v.value().dataStart % 8, 0u);
  EXPECT_LE(body.size(), maxUpdateBytes(spec));
}

}  // namespace
}  // namespace lifl::dataplane
