#include "lifl/common/base64.h"

#include <gtest/gtest.h>

namespace lifl {
namespace {

TEST(Base64, RoundTripsEveryLength) {
  std::string s;
  for (int n = 0; n < 40; ++n) {
    EXPECT_EQ(base64Decode(base64Encode(s)), s) << "length " << n;
    s += static_cast<char>(n * 37);
  }
}

TEST(Base64, KnownVectors) {  // RFC 4648 section 10
  EXPECT_EQ(base64Encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64Encode("fo"), "Zm8=");
  EXPECT_EQ(base64Decode("Zm9vYg=="), "foob");
}

TEST(Base64, RejectsMalformed) {
  EXPECT_FALSE(base64Decode("abc"));
  EXPECT_FALSE(base64Decode("ab$d"));
  EXPECT_FALSE(base64Decode("a=bc"));
}

}  // namespace
}  // namespace lifl
