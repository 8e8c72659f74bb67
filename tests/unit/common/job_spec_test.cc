#include "lifl/common/job_spec.h"

#include <gtest/gtest.h>

namespace lifl {
namespace {

constexpr const char* kJson = R"({
  "id": "demo",
  "model": {"tensors": {"dense.weight": {"dtype": "F32", "shape": [256, 784]},
                        "dense.bias":   {"dtype": "F32", "shape": [256]}},
            "init": "zeros"},
  "clients_per_round": 20, "rounds": 3, "update": "weights",
  "strategy": {"name": "fedavg"}, "hierarchy": {"fan_in": 8}, "deadline_seconds": 600
})";

TEST(JobSpec, ParsesApiExample) {
  auto spec = parseJobSpec(kJson, "application/json");
  ASSERT_TRUE(spec) << spec.error().toString();
  EXPECT_EQ(spec.value().id, "demo");
  ASSERT_EQ(spec.value().tensors.size(), 2u);
  EXPECT_EQ(spec.value().tensors[0].name, "dense.bias");  // sorted by name
  EXPECT_EQ(spec.value().modelElements(), 256u * 784u + 256u);
  EXPECT_EQ(spec.value().clientsPerRound, 20u);
  EXPECT_EQ(spec.value().fanIn, 8u);
  EXPECT_EQ(spec.value().init, ModelInit::Zeros);
}

TEST(JobSpec, ParsesYaml) {
  auto spec = parseJobSpec(R"(
id: y1
model:
  tensors:
    w: {dtype: F32, shape: [4, 3]}
clients_per_round: 5
rounds: 2
update: delta
hierarchy: {fan_in: 2, levels: 3}
)",
                           "application/yaml");
  ASSERT_TRUE(spec) << spec.error().toString();
  EXPECT_EQ(spec.value().tensors[0].elements, 12u);
  EXPECT_EQ(spec.value().update, UpdateMode::Delta);
  EXPECT_EQ(spec.value().levels, 3u);
}

struct BadSpec {
  const char* name;
  const char* body;
  int status;
};

TEST(JobSpec, RejectsBadSpecs) {
  const BadSpec cases[] = {
      {.name = "not json", .body = "{", .status = 400},
      {.name = "array", .body = "[]", .status = 422},
      {.name = "no id", .body = R"({"model":{"tensors":{"w":{"shape":[1]}}}})", .status = 422},
      {.name = "bad id",
       .body = R"({"id":"a b","model":{"tensors":{"w":{"shape":[1]}}}})",
       .status = 422},
      {.name = "no tensors", .body = R"({"id":"a","model":{"tensors":{}}})", .status = 422},
      {.name = "zero dim",
       .body = R"({"id":"a","model":{"tensors":{"w":{"shape":[0]}}}})",
       .status = 422},
      {.name = "f16 model",
       .body = R"({"id":"a","model":{"tensors":{"w":{"dtype":"F16","shape":[1]}}}})",
       .status = 422},
      {.name = "bad init",
       .body = R"({"id":"a","model":{"tensors":{"w":{"shape":[1]}},"init":"ones"}})",
       .status = 422},
      {.name = "zero clients",
       .body = R"({"id":"a","model":{"tensors":{"w":{"shape":[1]}}},"clients_per_round":0})",
       .status = 422},
      {.name = "fan-in 1",
       .body = R"({"id":"a","model":{"tensors":{"w":{"shape":[1]}}},"hierarchy":{"fan_in":1}})",
       .status = 422},
      {.name = "strategy",
       .body = R"({"id":"a","model":{"tensors":{"w":{"shape":[1]}}},"strategy":{"name":"fedsgd"}})",
       .status = 422},
      {.name = "min > per round",
       .body =
           R"({"id":"a","model":{"tensors":{"w":{"shape":[1]}}},"clients_per_round":2,"min_clients":3})",
       .status = 422},
  };
  for (const auto& c : cases) {
    auto spec = parseJobSpec(c.body, "application/json");
    ASSERT_FALSE(spec) << c.name;
    EXPECT_EQ(spec.error().status, c.status) << c.name << ": " << spec.error().toString();
  }
  auto yaml = parseJobSpec("id: [unclosed", "application/yaml");
  ASSERT_FALSE(yaml);
  EXPECT_EQ(yaml.error().status, 400);
}

}  // namespace
}  // namespace lifl
