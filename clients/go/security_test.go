package bwp

import (
	"crypto/sha256"
	"testing"

	"github.com/Shopify/sarama"
)

// RFC 7677, section 3: the SCRAM-SHA-256 exchange of user "user", password "pencil".
func TestSCRAMSHA256AgainstRFC7677(t *testing.T) {
	c := &scramClient{hash: sha256.New, nonce: "rOprNGfwEbeRWgbNEkqO"}
	if err := c.Begin("user", "pencil", ""); err != nil {
		t.Fatal(err)
	}
	first, err := c.Step("")
	if err != nil || first != "n,,n=user,r=rOprNGfwEbeRWgbNEkqO" {
		t.Fatalf("client-first %q %v", first, err)
	}
	final, err := c.Step("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
	want := "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	if err != nil || final != want {
		t.Fatalf("client-final\\n got %q %v\\nwant %q", final, err, want)
	}
	if _, err := c.Step("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="); err != nil || !c.Done() {
		t.Fatalf("server-final: %v done=%v", err, c.Done())
	}
	bad := &scramClient{hash: sha256.New, nonce: "rOprNGfwEbeRWgbNEkqO"}
	bad.Begin("user", "pencil", "")
	bad.Step("")
	bad.Step("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
	if _, err := bad.Step("v=AAAA"); err == nil {
		t.Fatal("a wrong server signature was accepted")
	}
}

func TestSecurityAppliesToSaramaConfig(t *testing.T) {
	for _, mech := range []string{"PLAIN", "SCRAM-SHA-256", "scram-sha-512"} {
		sc := sarama.NewConfig()
		if err := (Security{SASLMechanism: mech, User: "u", Password: "p"}).Apply(sc); err != nil {
			t.Fatal(mech, err)
		}
		if !sc.Net.SASL.Enable || sc.Net.SASL.User != "u" || (mech != "PLAIN" && sc.Net.SASL.SCRAMClientGeneratorFunc == nil) {
			t.Fatalf("%s: %+v", mech, sc.Net.SASL)
		}
	}
	tlsCfg, err := TLSConfig("", "", "")
	if err != nil {
		t.Fatal(err)
	}
	sc := sarama.NewConfig()
	if err := (Security{TLS: tlsCfg}).Apply(sc); err != nil || !sc.Net.TLS.Enable || sc.Net.SASL.Enable {
		t.Fatalf("TLS only: %v %+v", err, sc.Net)
	}
	if err := (Security{SASLMechanism: "GSSAPI", User: "u", Password: "p"}).Apply(sarama.NewConfig()); err == nil {
		t.Fatal("an unknown mechanism was accepted")
	}
	if err := (Security{SASLMechanism: "PLAIN"}).Apply(sarama.NewConfig()); err == nil {
		t.Fatal("SASL without credentials was accepted")
	}
	if _, err := TLSConfig("/nonexistent/ca.pem", "", ""); err == nil {
		t.Fatal("a missing CA file was accepted")
	}
}
