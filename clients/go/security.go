package bwp

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"os"
	"strings"

	"github.com/Shopify/sarama"
)

// Security is how a Consumer or TelemetryProducer authenticates to the brokers, as the Python
// side's BWP_KAFKA_SECURITY_PROTOCOL / BWP_KAFKA_SASL_* / BWP_KAFKA_SSL_* settings do (the
// production setting is SASL_SSL: TLS plus SASL). The zero value is PLAINTEXT.
type Security struct {
	// TLS, when set, encrypts the connections (SSL, SASL_SSL). TLSConfig builds one from a CA file.
	TLS *tls.Config
	// SASLMechanism: "" (none), "PLAIN", "SCRAM-SHA-256" or "SCRAM-SHA-512".
	SASLMechanism string
	User          string
	Password      string
}

// TLSConfig returns a TLS configuration that trusts the PEM certificates in caFile (the system
// roots when caFile is empty), with a client certificate when certFile and keyFile are given.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("bwp tls: reading the CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("bwp tls: %s holds no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("bwp tls: client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Apply sets sc's Net.TLS and Net.SASL from s; an unknown mechanism or missing credentials are
// an error.
func (s Security) Apply(sc *sarama.Config) error {
	if s.TLS != nil {
		sc.Net.TLS.Enable = true
		sc.Net.TLS.Config = s.TLS
	}
	mech := strings.ToUpper(s.SASLMechanism)
	if mech == "" {
		return nil
	}
	if s.User == "" || s.Password == "" {
		return fmt.Errorf("bwp security: SASL %s needs a user and a password", mech)
	}
	sc.Net.SASL.Enable = true
	sc.Net.SASL.Handshake = true
	sc.Net.SASL.User, sc.Net.SASL.Password = s.User, s.Password
	switch mech {
	case "PLAIN":
		sc.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	case "SCRAM-SHA-256":
		sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: sha256.New} }
	case "SCRAM-SHA-512":
		sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: sha512.New} }
	default:
		return fmt.Errorf("bwp security: SASL mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, got %q", s.SASLMechanism)
	}
	return nil
}

// scramClient is the client side of SCRAM (RFC 5802, no channel binding), which sarama leaves to
// its user: client-first, client-final with the proof, then the server's signature checked.
type scramClient struct {
	hash                    func() hash.Hash
	user, password, authzID string
	nonce                   string // the client nonce (tests set it; Begin draws one)
	firstBare, serverSig    string
	step                    int
}

func (c *scramClient) Begin(user, password, authzID string) error {
	c.user, c.password, c.authzID, c.step = user, password, authzID, 0
	if c.nonce == "" {
		b := make([]byte, 18)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		c.nonce = base64.RawStdEncoding.EncodeToString(b)
	}
	return nil
}

func (c *scramClient) Step(challenge string) (string, error) {
	c.step++
	switch c.step {
	case 1:
		name := strings.NewReplacer("=", "=3D", ",", "=2C").Replace(c.user)
		c.firstBare = "n=" + name + ",r=" + c.nonce
		return "n," + authz(c.authzID) + "," + c.firstBare, nil
	case 2:
		attrs := scramAttrs(challenge)
		nonce, salt64, iters := attrs["r"], attrs["s"], attrs["i"]
		if !strings.HasPrefix(nonce, c.nonce) || salt64 == "" || iters == "" {
			return "", fmt.Errorf("bwp scram: unexpected server-first message %q", challenge)
		}
		salt, err := base64.StdEncoding.DecodeString(salt64)
		if err != nil {
			return "", fmt.Errorf("bwp scram: salt: %w", err)
		}
		var n int
		if _, err := fmt.Sscanf(iters, "%d", &n); err != nil || n < 1 {
			return "", fmt.Errorf("bwp scram: iteration count %q", iters)
		}
		salted := pbkdf2(c.hash, []byte(c.password), salt, n)
		clientKey := hmacOf(c.hash, salted, []byte("Client Key"))
		h := c.hash()
		h.Write(clientKey)
		storedKey := h.Sum(nil)
		finalBare := "c=" + base64.StdEncoding.EncodeToString([]byte("n,"+authz(c.authzID)+",")) + ",r=" + nonce
		authMsg := c.firstBare + "," + challenge + "," + finalBare
		sig := hmacOf(c.hash, storedKey, []byte(authMsg))
		proof := make([]byte, len(clientKey))
		for i := range proof {
			proof[i] = clientKey[i] ^ sig[i]
		}
		serverKey := hmacOf(c.hash, salted, []byte("Server Key"))
		c.serverSig = base64.StdEncoding.EncodeToString(hmacOf(c.hash, serverKey, []byte(authMsg)))
		return finalBare + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
	case 3:
		attrs := scramAttrs(challenge)
		if e, ok := attrs["e"]; ok {
			return "", fmt.Errorf("bwp scram: the server refused: %s", e)
		}
		if !hmac.Equal([]byte(attrs["v"]), []byte(c.serverSig)) {
			return "", errors.New("bwp scram: the server's signature does not match")
		}
		return "", nil
	}
	return "", errors.New("bwp scram: no step after the server-final message")
}

func (c *scramClient) Done() bool { return c.step >= 3 }

func authz(id string) string {
	if id == "" {
		return ""
	}
	return "a=" + id
}

func scramAttrs(msg string) map[string]string {
	out := map[string]string{}
	for _, part := range strings.Split(msg, ",") {
		if len(part) > 2 && part[1] == '=' {
			out[part[:1]] = part[2:]
		}
	}
	return out
}

func hmacOf(h func() hash.Hash, key, msg []byte) []byte {
	m := hmac.New(h, key)
	m.Write(msg)
	return m.Sum(nil)
}

// pbkdf2 is PBKDF2 (RFC 8018) with one output block: SCRAM's Hi(password, salt, i).
func pbkdf2(h func() hash.Hash, password, salt []byte, iter int) []byte {
	u := hmacOf(h, password, append(append([]byte{}, salt...), 0, 0, 0, 1))
	out := append([]byte{}, u...)
	for i := 1; i < iter; i++ {
		u = hmacOf(h, password, u)
		for j := range out {
			out[j] ^= u[j]
		}
	}
	return out
}
