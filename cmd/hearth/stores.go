package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/casindex"
	"github.com/hearth-build/hearth/internal/s3cas"
	"github.com/hearth-build/hearth/internal/tiered"
)

// storesStartTimeout bounds the checks of the stores at start (the bucket
// exists and accepts the credentials, Redis answers).
const storesStartTimeout = 30 * time.Second

// casDiskMaxBytes is the bound of the local disk CAS: --cas-max-bytes, or
// with a stores block its fast tier's max_bytes (the two may not both be set).
func casDiskMaxBytes(f serverFlags) (int64, error) {
	if f.stores == nil || f.stores.CAS == nil {
		return f.casMaxBytes, nil
	}
	if f.casMaxBytes != 0 {
		return 0, errors.New("--cas-max-bytes conflicts with stores.cas in --config-server: bound the local tier with stores.cas.fast_slow.fast.filesystem.max_bytes")
	}
	return f.stores.CAS.FastMaxBytes, nil
}

// maxCASBlobSize is the largest blob the CAS takes (0: any): the disk's
// bound, unless the slow tier behind it takes blobs of any size.
func maxCASBlobSize(f serverFlags) int64 {
	if f.stores != nil && f.stores.CAS != nil {
		return 0
	}
	return f.casMaxBytes
}

// openCASStores returns the CAS below the verifying wrapper: the disk alone,
// or the stores block's fast/slow pair with the disk as its fast tier; close
// releases what it opened.
func openCASStores(f serverFlags, disk *cas.Disk, logger *slog.Logger) (store cas.Store, close func(), err error) {
	c := f.stores
	if c == nil || c.CAS == nil {
		return disk, func() {}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), storesStartTimeout)
	defer cancel()
	s3 := c.CAS.S3
	slow, err := s3cas.New(ctx, s3cas.Options{
		Name: "cas", Endpoint: s3.Endpoint, Secure: s3.Secure, Bucket: s3.Bucket, Region: s3.Region, Prefix: s3.Prefix,
		AccessKeyID: s3.AccessKeyID, SecretAccessKey: s3.SecretAccessKey,
		MaxConcurrentRequests: s3.MaxConcurrentRequests, Retries: s3.Retries,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("stores.cas.fast_slow.slow.s3: %w", err)
	}
	var index tiered.Index
	close = func() {}
	if ix := c.CAS.Index; ix != nil {
		rix, err := casindex.New(ctx, casindex.Options{URL: ix.URL, Prefix: ix.Prefix, TTL: ix.TTL})
		if err != nil {
			return nil, nil, fmt.Errorf("stores.cas.index.redis: %w", err)
		}
		index, close = rix, func() { rix.Close() }
	}
	logger.Info("CAS on a fast/slow pair", "fast_max_bytes", c.CAS.FastMaxBytes, "slow", slow.Name(), "index", c.CAS.Index != nil)
	t := tiered.New(disk, slow, index, logger)
	closeIndex := close
	// The fast copies still committing in the background finish before the
	// data dir is unlocked.
	return t, func() { t.Wait(); closeIndex() }, nil
}
