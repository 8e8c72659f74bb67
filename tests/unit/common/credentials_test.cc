// Client tokens and the admin credential (lifl/common/credentials.h). References: RFC 8032's
// first Ed25519 test vector for the key handling, RFC 4648 for base64url; every tampered,
// foreign, expired or malformed token must be refused with 401.
#include "lifl/common/credentials.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "lifl/common/base64.h"

namespace lifl::auth {
namespace {

class Credentials : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("lifl-credentials-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const char* name) const { return (dir_ / name).string(); }
  static void write(const std::string& p, const std::string& text, mode_t mode) {
    std::filesystem::create_directories(std::filesystem::path(p).parent_path());
    std::ofstream(p) << text;
    ::chmod(p.c_str(), mode);
  }
  std::filesystem::path dir_;
};

TEST(Base64Url, KnownVectorsWithoutPadding) {  // RFC 4648 section 10, URL-safe alphabet
  EXPECT_EQ(base64UrlEncode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64UrlEncode("fo"), "Zm8");
  EXPECT_EQ(base64UrlEncode("\xfb\xff"), "-_8");
  EXPECT_EQ(base64UrlDecode("-_8"), "\xfb\xff");
  EXPECT_EQ(base64UrlDecode("Zm9vYg"), "foob");
  EXPECT_FALSE(base64UrlDecode("Zm8="));  // padding is not of this form
  EXPECT_FALSE(base64UrlDecode("+/8"));   // nor the standard alphabet
  EXPECT_FALSE(base64UrlDecode("Z"));
  EXPECT_FALSE(base64UrlDecode("Zm9"));  // "fo" is Zm8: the last character's unused bits set
}

TEST_F(Credentials, TheKeyFileGivesRfc8032sPublicKey) {
  // RFC 8032 section 7.1, test 1: the secret key and the public key it gives.
  const std::string seed =
      "\x9d\x61\xb1\x9d\xef\xfd\x5a\x60\xba\x84\x4a\xf4\x92\xec\x2c\xc4\x44\x49\xc5\x69\x7b\x32"
      "\x69\x19\x70\x3b\xac\x03\x1c\xae\x7f\x60";
  const std::string pub =
      "\xd7\x5a\x98\x01\x82\xb1\x0a\xb7\xd5\x4b\xfe\xd3\xc9\x64\x07\x3a\x0e\xe1\x72\xf3\xda\xa6"
      "\x23\x25\xaf\x02\x1a\x68\xf7\x07\x51\x1a";
  write(path("signing.key"), base64Encode(seed) + "\n", 0600);
  auto key = SigningKey::loadOrCreate(path("signing.key"));
  ASSERT_TRUE(key) << key.error().toString();
  EXPECT_EQ(key.value().publicKey(), base64UrlEncode(pub));
}

TEST_F(Credentials, ATokenVerifiesWithItsKeyAndCarriesItsClaims) {
  auto key = SigningKey::loadOrCreate(path("auth/signing.key"));
  ASSERT_TRUE(key) << key.error().toString();
  struct stat st {};
  ASSERT_EQ(::stat(path("auth/signing.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // Loading again gives the same key, not a new one.
  auto again = SigningKey::loadOrCreate(path("auth/signing.key"));
  ASSERT_TRUE(again);
  EXPECT_EQ(again.value().publicKey(), key.value().publicKey());

  auto verifier = TokenVerifier::fromPublicKey(key.value().publicKey());
  ASSERT_TRUE(verifier);
  const int64_t now = unixNow();
  auto token = key.value().sign({"job-a", "client/7", now + 60});
  ASSERT_TRUE(token);
  EXPECT_TRUE(token.value().starts_with("lifl1."));
  auto claims = verifier.value().verify(token.value(), now);
  ASSERT_TRUE(claims) << claims.error().toString();
  EXPECT_EQ(claims.value().job, "job-a");
  EXPECT_EQ(claims.value().client, "client/7");
  EXPECT_EQ(claims.value().expires, now + 60);
}

TEST_F(Credentials, TamperedForeignExpiredAndMalformedTokensAre401) {
  auto key = SigningKey::loadOrCreate(path("a.key"));
  auto other = SigningKey::loadOrCreate(path("b.key"));
  ASSERT_TRUE(key && other);
  EXPECT_NE(key.value().publicKey(), other.value().publicKey());
  auto verifier = TokenVerifier::fromPublicKey(key.value().publicKey());
  ASSERT_TRUE(verifier);
  const int64_t now = unixNow();
  const std::string token = key.value().sign({"job-a", "c1", now + 60}).value();
  auto refused = [&](const std::string& t, int64_t at, const char* what) {
    auto r = verifier.value().verify(t, at);
    ASSERT_FALSE(r) << what;
    EXPECT_EQ(r.error().status, 401) << what;
    EXPECT_EQ(r.error().code, "unauthorized") << what;
  };
  // Every character changed, one at a time, is refused (prefix, claims, signature).
  for (size_t i = 0; i < token.size(); ++i) {
    std::string t = token;
    t[i] = t[i] == 'A' ? 'B' : 'A';
    if (t == token) continue;
    refused(t, now, "a tampered character");
  }
  // Claims of another job under the original signature.
  const size_t dot = token.rfind('.');
  const std::string forgedClaims =
      "lifl1." +
      base64UrlEncode(R"({"job":"job-b","client":"c1","exp":)" + std::to_string(now + 60) + "}");
  refused(forgedClaims + token.substr(dot), now, "claims swapped under the signature");
  refused(other.value().sign({"job-a", "c1", now + 60}).value(), now, "another key's token");
  refused(token, now + 60, "expired at exp");
  refused(token, now + 3600, "long expired");
  refused("", now, "empty");
  refused("lifl1.", now, "prefix only");
  refused("lifl1.abc", now, "no signature");
  refused("Bearer " + token, now, "the scheme left in");
  refused(token + "x", now, "a longer signature");
  EXPECT_TRUE(verifier.value().verify(token, now + 59));
}

TEST_F(Credentials, ABadPublicKeyIsRefused) {
  EXPECT_FALSE(TokenVerifier::fromPublicKey(""));
  EXPECT_FALSE(TokenVerifier::fromPublicKey(base64UrlEncode(std::string(31, 'x'))));
  EXPECT_FALSE(TokenVerifier::fromPublicKey("not base64!"));
}

TEST_F(Credentials, TheSharedSecretMatchesOnlyItsSecret) {
  auto admin = SharedSecret::loadOrCreate(path("auth/admin.token"));
  ASSERT_TRUE(admin) << admin.error().toString();
  std::ifstream in(path("auth/admin.token"));
  std::string secret;
  std::getline(in, secret);
  EXPECT_EQ(secret.size(), 64u);  // 32 random bytes in hex
  EXPECT_TRUE(admin.value().matches(secret));
  EXPECT_FALSE(admin.value().matches(""));
  EXPECT_FALSE(admin.value().matches(secret.substr(1)));
  std::string flipped = secret;
  flipped[10] = flipped[10] == '0' ? '1' : '0';
  EXPECT_FALSE(admin.value().matches(flipped));
  struct stat st {};
  ASSERT_EQ(::stat(path("auth").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST_F(Credentials, SecretFilesOthersCanReadAreRefused) {
  write(path("open.token"), "secret\n", 0644);
  auto admin = SharedSecret::loadOrCreate(path("open.token"));
  ASSERT_FALSE(admin);
  EXPECT_EQ(admin.error().code, "invalid_config");
  write(path("bad.key"), "not a key\n", 0600);
  EXPECT_FALSE(SigningKey::loadOrCreate(path("bad.key")));
  write(path("empty.token"), "\n", 0600);
  EXPECT_FALSE(SharedSecret::loadOrCreate(path("empty.token")));
}

TEST(BearerToken, TakesTheTokenOfTheBearerSchemeOnly) {
  EXPECT_EQ(bearerToken("Bearer abc"), "abc");
  EXPECT_EQ(bearerToken("bearer  abc"), "abc");
  EXPECT_EQ(bearerToken("Basic abc"), "");
  EXPECT_EQ(bearerToken("Bearer"), "");
  EXPECT_EQ(bearerToken(""), "");
}

}  // namespace
}  // namespace lifl::auth
