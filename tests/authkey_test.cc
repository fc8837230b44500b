// The authkey scheme's building blocks, against fixed vectors.
#include "common/authkey.h"

#include "gtest/gtest.h"

namespace proctor {
namespace {

TEST(AuthkeyTest, HmacSha256MatchesRfc4231) {
  // RFC 4231, test case 2.
  EXPECT_EQ(HexEncode(HmacSha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(AuthkeyTest, HexIsLowerCaseBothWays) {
  std::string bytes("\x00\x7f\x80\xff", 4);
  EXPECT_EQ(HexEncode(bytes), "007f80ff");
  EXPECT_EQ(*HexDecode("007f80ff"), bytes);
  // One spelling per value: upper-case digits are refused, and say so.
  EXPECT_EQ(HexDecode("007F80ff").status().message(),
            "hex text has an upper-case digit (use 0-9a-f)");
  EXPECT_EQ(HexDecode("abc").status().message(), "hex text has an odd length (3 characters)");
  EXPECT_EQ(HexDecode("zz").status().message(), "hex text has a character outside 0-9a-f");
}

TEST(AuthkeyTest, CredentialVerifiesOnlyWithItsKeyAndMethod) {
  CallCredential c = CallCredential::Make("key", "admin", "Start", 1700000000000);
  absl::StatusOr<CallCredential> parsed = CallCredential::Parse(c.Format());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->key_id, "admin");
  EXPECT_EQ(parsed->unix_millis, 1700000000000);
  EXPECT_TRUE(parsed->VerifiedBy("key", "Start"));
  EXPECT_FALSE(parsed->VerifiedBy("other key", "Start"));
  EXPECT_FALSE(parsed->VerifiedBy("key", "Terminate"));
  EXPECT_NE(CallCredential::Make("key", "admin", "Start", 1).nonce_hex,
            CallCredential::Make("key", "admin", "Start", 1).nonce_hex);
}

TEST(AuthkeyTest, MalformedCredentialsAreRefused) {
  for (const char* text : {"", "v1", "v2 admin 1 00 00", "v1 admin notanumber "
                           "00000000000000000000000000000000 "
                           "0000000000000000000000000000000000000000000000000000000000000000"}) {
    EXPECT_FALSE(CallCredential::Parse(text).ok()) << text;
  }
}

TEST(AuthkeyTest, ServerProofDependsOnKeyMethodAndNonce) {
  std::string proof = ServerProof("key", "Join", "00ff");
  EXPECT_EQ(proof.size(), 64u);
  EXPECT_NE(proof, ServerProof("key", "Join", "00fe"));
  EXPECT_NE(proof, ServerProof("key", "Start", "00ff"));
  EXPECT_NE(proof, ServerProof("yek", "Join", "00ff"));
}

TEST(AuthkeyTest, ConstantTimeEqualsComparesWholeStrings) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
}

}  // namespace
}  // namespace proctor
